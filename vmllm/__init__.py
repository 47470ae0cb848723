__version__ = "0.1.0"

# `import vmllm` registers vmllm's config, model and processor with transformers' Auto classes (nbs/05_model.ipynb)
from . import model as _model
