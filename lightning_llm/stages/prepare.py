"""llm prepare: build (or find) the prepared-data folder for data= and tokenizer=."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from lightning_llm.config import to_dataclass
from lightning_llm.data import DataConfig, PreparedData, SourceConfig, TokenizerConfig, prepare
from lightning_llm.stages.common import log, stage


def data_config(cfg: DictConfig) -> DataConfig:
    for name, source in (cfg.data.get("mix") or {}).items():  # checked alone first, so an error names it
        to_dataclass(SourceConfig, source, f"data.mix.{name}")
    return to_dataclass(DataConfig, cfg.data, "data")


def prepared_data(cfg: DictConfig) -> PreparedData:
    return prepare(data_config(cfg), to_dataclass(TokenizerConfig, cfg.tokenizer, "tokenizer"), cfg.paths.data_cache)


@stage("prepare")
def main(cfg: DictConfig) -> dict:
    data = prepared_data(cfg)
    meta = data.meta
    for split, info in meta["splits"].items():
        log.info("%-5s %6s documents %12s tokens %12s bytes", split, f"{info['documents']:,}", f"{info['tokens']:,}",
                 f"{info['bytes']:,}")
    log.info("vocabulary %d tokens (%s); data card: %s", meta["vocab_size"], meta["tokenizer"], data.dir / "report.md")
    print(data.dir)
    return json.loads(json.dumps(meta))
