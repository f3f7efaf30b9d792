"""llm export: a trained model as a stock Hugging Face transformers model folder."""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import to_dataclass
from lightning_llm.stages.common import stage

FORMATS = ("hf",)


@dataclass
class ExportConfig:
    """The checked form of conf/export.yaml, which holds the defaults."""

    ckpt: str
    format: str
    out: str
    overwrite: bool

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")


@stage("export")
def main(cfg: DictConfig) -> dict:
    args = to_dataclass(ExportConfig, OmegaConf.masked_copy(cfg, [f.name for f in fields(ExportConfig)]), "export")
    from lightning_llm.export import export_hf

    record = export_hf(ckpt=args.ckpt, out=args.out, overwrite=args.overwrite)
    check = record["check"]
    print(f"exported {record['architecture']} to {args.out}: logits match to {check['max_abs_logit_diff']:.2g} "
          f"over {check['tokens']} random tokens; load it with AutoModelForCausalLM.from_pretrained({args.out!r})")
    return record
