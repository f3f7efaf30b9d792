"""The corpus pipeline in plain Python: no Lightning, no Hydra."""

from lightning_llm.data.clean import CleanConfig
from lightning_llm.data.dedup import DedupConfig, NearDedupConfig
from lightning_llm.data.leakage import LeakageConfig
from lightning_llm.data.prepare import DataConfig, PreparedData, prepare
from lightning_llm.data.sources import SourceConfig
from lightning_llm.data.split import SplitConfig
from lightning_llm.data.tokenizer import TokenizerConfig

__all__ = ["CleanConfig", "DataConfig", "DedupConfig", "LeakageConfig", "NearDedupConfig", "PreparedData",
           "SourceConfig", "SplitConfig", "TokenizerConfig", "prepare"]
