"""llm serve: an OpenAI-compatible HTTP API over a trained model, until SIGTERM/SIGINT."""

from __future__ import annotations

from omegaconf import DictConfig

from lightning_llm.config import to_dataclass
from lightning_llm.errors import UserError
from lightning_llm.serving.settings import ServeSettings
from lightning_llm.stages.common import stage


@stage("serve")
def main(cfg: DictConfig) -> None:
    settings = to_dataclass(ServeSettings, cfg.serve, "serve", ckpt=str(cfg.ckpt), device=str(cfg.device))
    # Settings are checked before torch is imported: a wrong one fails in a second.
    from lightning_llm.model.io import load_artifact, resolve_device
    from lightning_llm.serving.server import serve

    try:
        settings.device = resolve_device(settings.device)
    except ValueError as err:
        raise UserError(str(err)) from None
    # One process serves the model it loads; replicas each load their own, after this check.
    artifact = load_artifact(settings.ckpt, device=settings.device)
    serve(settings, artifact if settings.workers == 1 else None)
