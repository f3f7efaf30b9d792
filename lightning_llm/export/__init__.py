"""Interoperability with Hugging Face transformers: export a model folder or run as a stock
transformers model (GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM) and import one back.

transformers is an optional extra (`pip install 'lightning-llm[hf]'`): it is imported inside the
functions that need it, so importing this package never requires it.
"""

from lightning_llm.export.hf import ARCHITECTURES, architecture_for, export_hf, import_hf

__all__ = ["ARCHITECTURES", "architecture_for", "export_hf", "import_hf"]
