"""llm import: a local Hugging Face transformers folder as a lightning-llm model folder.
(The stage is named `import`; the module cannot be, `import` being a Python keyword.)"""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import to_dataclass
from lightning_llm.stages.common import stage


@dataclass
class ImportConfig:
    """The checked form of conf/import.yaml, which holds the defaults."""

    hf: str
    out: str
    overwrite: bool


@stage("import")
def main(cfg: DictConfig) -> dict:
    args = to_dataclass(ImportConfig, OmegaConf.masked_copy(cfg, [f.name for f in fields(ImportConfig)]), "import")
    from lightning_llm.export import import_hf

    manifest = import_hf(hf=args.hf, out=args.out, overwrite=args.overwrite)
    check = manifest["hf"]["check"]
    print(f"imported {manifest['hf']['architecture']} to {args.out}: logits match to "
          f"{check['max_abs_logit_diff']:.2g} over {check['tokens']} random tokens; try "
          f"`llm generate ckpt={args.out}`")
    return manifest
