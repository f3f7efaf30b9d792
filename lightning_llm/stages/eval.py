"""llm eval: evaluate a trained model; writes <run dir>/eval/{report.md,metrics.json} and prints the headline."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import to_dataclass
from lightning_llm.evaluation import EvalConfig, evaluate
from lightning_llm.stages.common import stage


def eval_config(cfg: DictConfig) -> EvalConfig:
    return to_dataclass(EvalConfig, OmegaConf.masked_copy(cfg, [f.name for f in fields(EvalConfig)]), "eval")


@stage("eval")
def main(cfg: DictConfig) -> dict:
    return evaluate(eval_config(cfg))
