"""The transformer in plain PyTorch: no Lightning, no Hydra."""

from lightning_llm.model.generation import stream
from lightning_llm.model.gpt import GPT, GPTConfig, KVCache, flops_per_token
from lightning_llm.model.sampling import sample

__all__ = ["GPT", "GPTConfig", "KVCache", "flops_per_token", "sample", "stream"]
