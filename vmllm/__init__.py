__version__ = "0.1.0"

# `import vmllm` registers vmllm's config, model and processor with transformers' Auto classes (nbs/05_model.ipynb),
# and lets `VmllmForCausalLM.from_pretrained` read the paper's released (LLaVA-layout) directories (nbs/11_zoo.ipynb)
from . import model as _model, zoo as _zoo
