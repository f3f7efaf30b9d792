"""The corpus pipeline in plain Python: no Lightning, no Hydra.

The names below load on first use, so `from lightning_llm.data import PreparedData` (what
training and evaluation need) does not import the pipeline (ftfy, datasketch, tokenizers).
The pipeline itself lives in lightning_llm.data.pipeline."""

from __future__ import annotations

import importlib

_HOMES = {
    "CleanConfig": "clean", "DataConfig": "config", "DedupConfig": "dedup", "LeakageConfig": "leakage",
    "NearDedupConfig": "dedup", "PreparedData": "prepared", "SourceConfig": "sources", "SplitConfig": "split",
    "TokenizerConfig": "tokenizer", "prepare": "pipeline",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
