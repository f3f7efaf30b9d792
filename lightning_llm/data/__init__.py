"""The corpus pipeline in plain Python: no Lightning, no Hydra."""

from lightning_llm.data.prepare import CleanConfig, DataConfig, PreparedData, SplitConfig, prepare
from lightning_llm.data.tokenizer import TokenizerConfig

__all__ = ["CleanConfig", "DataConfig", "PreparedData", "SplitConfig", "TokenizerConfig", "prepare"]
