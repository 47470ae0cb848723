__version__ = "0.1.0"

# `import vmllm` registers vmllm's config, model and processor with transformers' Auto classes (nbs/05_model.ipynb);
# their `from_pretrained` also read the paper's released (LLaVA-layout) directories, through nbs/11_zoo.ipynb's reader
from . import model as _model
