"""llm compare: one table of the headline metrics of several evaluated runs, printed and written."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from lightning_llm.errors import UserError
from lightning_llm.evaluation import compare
from lightning_llm.stages.common import log, stage


@stage("compare")
def main(cfg: DictConfig) -> str:
    runs = cfg.runs
    if not isinstance(runs, ListConfig):
        runs = [runs]  # a single run dir without brackets
    if any(not isinstance(run, str) for run in runs):
        raise UserError("runs must be a list of run dirs: runs=[<run dir>,<run dir>]")
    text = compare(list(runs), Path(cfg.out))
    print(text)
    log.info("compare: wrote %s", cfg.out)
    return text
