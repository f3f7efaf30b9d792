"""The transformer in plain PyTorch: no Lightning, no Hydra."""

from lightning_llm.model.gpt import GPT, GPTConfig, KVCache, flops_per_token

__all__ = ["GPT", "GPTConfig", "KVCache", "flops_per_token"]
