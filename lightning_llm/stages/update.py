"""llm update name=<registry> data=<new data>: continue the registry's live version on new data with
a replay share of its old data, gate it on both domains' held-out loss, register it either way and
promote it only if the gate passes. With update.remove=<data>, also push it away from that text and
gate on its loss rising. See lightning_llm/registry/update.py."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, open_dict

from lightning_llm.config import to_dataclass
from lightning_llm.errors import UserError
from lightning_llm.model.io import TOKENIZER
from lightning_llm.registry import Registry, list_registries
from lightning_llm.registry.update import ReplayDataModule, UpdateConfig, gate, losses_of, old_domain, register
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.finetune import finetune


def update(cfg: DictConfig) -> dict:
    settings = to_dataclass(UpdateConfig, cfg["update"], "update")  # cfg.update is a method
    if not cfg.name:
        raise UserError("llm update needs name=<registry> (its live version is what gets updated)")
    registry = Registry(cfg.paths.output_root, str(cfg.name))
    if not registry.exists():
        known = ", ".join(r.name for r in list_registries(cfg.paths.output_root)) or "none yet"
        raise UserError(f"no registry {cfg.name!r} under {registry.dir.parent} (registries: {known})")
    if cfg.finetune.format != "text" or cfg.finetune.export != "merged":
        raise UserError("llm update trains on text data and registers whole models: finetune.format=text and "
                        "finetune.export=merged")
    parent = registry.live_path()
    live = parent.name
    old = old_domain(registry, live, cache_root=Path(cfg.paths.data_cache),
                     tokenizer_json=(parent / TOKENIZER).read_text(), explicit=list(settings.old_data))
    if settings.remove is not None and cfg.finetune.forget is not None:
        raise UserError("llm update takes the text to remove as update.remove, not finetune.forget: set one")
    if settings.remove is not None and settings.replay > 0 and not settings.old_data:
        log.warning("update.remove with update.replay=%s replays the line's own data (%s), which may hold the text "
                    "being removed: pass update.old_data=[<prepared folder without it>] or update.replay=0",
                    settings.replay, ", ".join(d.dir.name for d in old))
    with open_dict(cfg):
        cfg.base = str(parent)
        cfg.finetune.base_data = str(old[0].dir)
        cfg.finetune.forget = settings.remove
    log.info("update of registry %s %s: old domain %s, replay %.0f%% of the windows from %s", registry.name, live,
             old[0].dir.name, 100 * settings.replay, ", ".join(d.dir.name for d in old))
    replay = (lambda datamodule: ReplayDataModule(datamodule, old, settings.replay)) if settings.replay > 0 else None
    metrics = finetune(cfg, train_data=replay, forget_key="update.remove")

    run_dir = Path(cfg.paths.run_dir)
    verdict = gate(losses_of(run_dir), settings)
    run = json.loads((run_dir / "run.json").read_text())
    removed = {"removed": run["finetune"]["forget"]} if settings.remove is not None else {}
    version, promoted, why = register(registry, model=run_dir / "model", parent=live, verdict=verdict, record={
        "run_dir": str(run_dir), "new_data": run["data"]["hash"], "old_domain": old[0].dir.name,
        "replay": settings.replay, "replay_data": [d.dir.name for d in old] if settings.replay > 0 else [],
        **removed}, lock_wait=settings.lock_wait)
    line = (f"registry {registry.name}: {version} is live (was {live}): {why}" if promoted else
            f"registry {registry.name}: {version} registered, not promoted ({registry.live} stays live): {why}")
    print(line)
    return {**metrics, "version": version, "promoted": promoted}


main = stage("update")(update)
