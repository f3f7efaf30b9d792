"""Shared fixtures: real configs composed from conf/, and the built-in corpus prepared once."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from lightning_llm.config import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")


def compose_config(stage: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=stage):
        return compose(config_name=stage, overrides=overrides or [])


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs") / "data"


@pytest.fixture(scope="session")
def prepared(cache_root):
    """The default experiment's data, prepared exactly as `llm prepare` would."""
    from lightning_llm.stages.prepare import prepared_data

    cfg = compose_config("prepare", [f"paths.data_cache={cache_root}"])
    return prepared_data(cfg)
