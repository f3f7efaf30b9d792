"""llm registry list|show|promote|rollback: the versions of a model and which one is live."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from lightning_llm.artifacts import markdown_table
from lightning_llm.errors import UserError
from lightning_llm.registry import Registry, list_registries
from lightning_llm.stages.common import stage

ACTIONS = ("list", "show", "promote", "rollback")


def registry_of(cfg: DictConfig) -> Registry:
    if not cfg.name:
        raise UserError(f"llm registry {cfg.action} needs name=<registry>")
    registry = Registry(cfg.paths.output_root, str(cfg.name))
    if cfg.action != "promote" and not registry.exists():
        known = ", ".join(r.name for r in list_registries(cfg.paths.output_root)) or "none yet"
        raise UserError(f"no registry {cfg.name!r} under {registry.dir.parent} (registries: {known})")
    return registry


def versions_table(registry: Registry) -> str:
    live, rows = registry.live, []
    for version in registry.versions():
        manifest = registry.manifest(version)
        info = manifest.get("registry", {})
        loss = (info.get("eval") or {}).get("best_val/loss")
        rows.append([version + (" (live)" if version == live else ""), info.get("parent_version") or "-",
                     manifest.get("produced_by", "?"), manifest.get("data_hash") or "-",
                     "-" if loss is None else f"{loss:.4f}", info.get("added", "?")])
    return markdown_table(["version", "parent", "produced by", "data", "val loss", "added"], rows)


def events_table(registry: Registry) -> str:
    return markdown_table(["when", "event", "version", "was live", "reason"],
                          [[e["at"], e["event"], e["version"], e["from"] or "-", e["reason"] or "-"]
                           for e in registry.state()["events"]])


@stage("registry")
def main(cfg: DictConfig) -> str:
    if cfg.action not in ACTIONS:
        raise UserError(f"action must be one of {', '.join(ACTIONS)}, got {cfg.action!r}")
    if cfg.action == "list" and not cfg.name:
        registries = list_registries(cfg.paths.output_root)
        text = markdown_table(["registry", "live", "versions", "last event"],
                              [[r.name, r.live or "-", len(r.versions()),
                                (lambda e: f"{e['event']} {e['version']} at {e['at']}")(r.state()["events"][-1])
                                if r.state()["events"] else "-"] for r in registries]) \
            if registries else f"no registries under {cfg.paths.output_root}/registry"
    else:
        registry = registry_of(cfg)
        if cfg.action == "list":
            text = versions_table(registry)
        elif cfg.action == "show":
            version = str(cfg.version) if cfg.version else registry.live_path().name
            text = (f"registry {registry.name}, {version}" + (" (live)" if version == registry.live else "") + "\n\n"
                    + json.dumps(registry.manifest(version), indent=2) + "\n\n" + events_table(registry))
        elif cfg.action == "promote":
            before = registry.live
            version = registry.promote(source=cfg.source, version=str(cfg.version) if cfg.version else None,
                                       reason=str(cfg.reason), expect_live=cfg.expect_live)
            text = f"registry {registry.name}: {version} is live (was {before or 'none'}): {registry.path(version)}"
        else:
            before = registry.live
            version = registry.rollback(reason=str(cfg.reason), expect_live=cfg.expect_live)
            text = f"registry {registry.name}: rolled back to {version} (was {before}): {registry.path(version)}"
    print(text)
    return text
