__version__ = "0.1.0"


# %% ../nbs/05_model.ipynb #c037b
import vmllm.model  # registers vmllm with AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

# %% ../nbs/05_model.ipynb #c037b
import vmllm.model  # registers vmllm with AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

# %% ../nbs/05_model.ipynb #c037b
import vmllm.model  # registers vmllm with AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

# %% ../nbs/05_model.ipynb #c037b
import vmllm.model  # registers vmllm with AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor