"""llm serve: an OpenAI-compatible HTTP API over a trained model (or a registry's live version,
followed as it changes), until SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lightning_llm.config import to_dataclass
from lightning_llm.errors import UserError
from lightning_llm.serving.settings import ServeSettings
from lightning_llm.stages.common import stage


@stage("serve")
def main(cfg: DictConfig) -> None:
    settings = to_dataclass(ServeSettings, cfg.serve, "serve", device=str(cfg.device), **model_of(cfg),
                            **template_and_index(cfg))
    # Settings are checked before torch is imported: a wrong one fails in a second.
    from lightning_llm.model.io import load_artifact, resolve_device
    from lightning_llm.serving.server import serve

    try:
        settings.device = resolve_device(settings.device)
    except ValueError as err:
        raise UserError(str(err)) from None
    index = None
    if settings.rag_dir is not None:
        from lightning_llm.rag import load_index

        index = load_index(settings.rag_dir)  # missing, empty or unreadable: one line before the port opens
        print(f"rag: index {index.name} ({index.meta['passages']:,} passages from {index.meta['files']} files "
              f"under {index.meta['root']})", flush=True)
    if settings.registry is not None:
        print(f"registry {settings.registry}: serving its live version {Path(settings.ckpt).name}, and the next one "
              f"promoted (a look every {settings.registry_poll:g} s)", flush=True)
    # One process serves the model and index it loads; replicas each load their own, after this check
    # (and after serve.dtype=auto is measured on it once for all of them).
    # The artifact travels in a list serve() empties: no frame here keeps a version `registry=` replaces.
    loaded = [load_artifact(settings.ckpt, device=settings.device)]
    serve(settings, loaded, index=index)


def model_of(cfg: DictConfig) -> dict:
    """The settings `ckpt=` or `registry=<name>` give: what to load (for a registry, its live version,
    the registry to follow, and by default the registry's name as the served model's)."""
    ckpt, name = cfg.get("ckpt"), cfg.get("registry")
    if (ckpt is None) == (name is None):
        raise UserError("llm serve needs ckpt=<run dir | .ckpt | model folder> or registry=<name> (one of them)")
    if name is None:
        return {"ckpt": str(ckpt)}
    from lightning_llm.config import check_name
    from lightning_llm.registry import Registry, list_registries

    registry = Registry(cfg.paths.output_root, check_name(name, "registry"))
    if not registry.exists():
        known = ", ".join(r.name for r in list_registries(cfg.paths.output_root)) or "none yet"
        raise UserError(f"registry={name}: no registry under {registry.dir.parent} (registries: {known})")
    out = {"ckpt": str(registry.live_path()), "registry": registry.name,
           "registry_root": str(Path(cfg.paths.output_root).resolve())}
    if cfg.serve.get("model_name") is None:
        out["model_name"] = registry.name
    return out


def template_and_index(cfg: DictConfig) -> dict:
    """The settings `template=<name>` and `rag.*` give: the template's name (checked now, loaded by
    each replica) and the index's folder."""
    from lightning_llm.config import check_name
    from lightning_llm.rag import index_dir
    from lightning_llm.templates import template_from_node

    rag = cfg.get("rag") or {}
    index = rag.get("index")
    name = template_from_node(cfg.template).name if cfg.get("template") is not None else None
    folder = None if index is None else index_dir(cfg.paths.output_root, check_name(index, "rag.index")).resolve()
    return {"template": name, "rag_dir": None if folder is None else str(folder),
            **{f"rag_{key}": rag[key] for key in ("top_k", "max_top_k") if key in rag}}
