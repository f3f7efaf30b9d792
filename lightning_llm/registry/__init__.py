"""A model registry: named lines of versions v1, v2, ... of a model, one of them live.

`outputs/registry/<name>/` holds `versions/v<k>/` (each a model folder as model/io.py writes it, its
manifest extended with a `registry` section) and `registry.json` (which version is live, and every
promotion and rollback with when and why). See store.py."""

from lightning_llm.registry.store import Registry, list_registries

__all__ = ["Registry", "list_registries"]
