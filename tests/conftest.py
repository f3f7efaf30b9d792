"""Shared helpers and fixtures: real configs composed from conf/, the built-in corpus prepared once,
the `llm` command run as a user runs it, and the tiny overrides that make a training run take seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lightning_llm.config import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
# Figures measured once per machine (precision=auto, the matmul peak) go to this session's own cache:
# a test never reads what another session measured under other load, nor writes the user's ~/.cache.
os.environ["LLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="llm-measured-")

LLM = [sys.executable, "-m", "lightning_llm.cli"]
# A training run of seconds: the smallest preset, 30 steps, two validations, short samples.
TINY = ["model=gpt-nano", "batch_size=16", "trainer.max_steps=30", "trainer.val_check_interval=15",
        "trainer.log_every_n_steps=1", "val_windows=16", "callbacks.samples.max_new_tokens=40",
        "optim.optimizer.lr=1e-2", "optim.scheduler.warmup_steps=5"]


def llm_env(outputs: Path | None = None, **extra: str) -> dict:
    """The environment of an `llm` run in a test: its own output root, W&B off, output unbuffered."""
    root = {"LLM_OUTPUT_ROOT": str(outputs)} if outputs is not None else {}
    return {**os.environ, **root, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


def llm(args: list[str], outputs: Path | None = None, *, check: bool = True, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `llm <args>` as a user would; with check, a failure shows the command's last output."""
    result = subprocess.run(LLM + args, capture_output=True, text=True, env=llm_env(outputs, **(env or {})),
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"llm {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def compose_config(stage: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=stage):
        return compose(config_name=stage, overrides=overrides or [])


def random_model_folder(folder: Path, tokenizer_json: str, **config) -> Path:
    """A model folder (as `llm train` writes one) of a seeded random GPT for the tokenizer: what a
    serving or registry test loads when it needs no trained weights."""
    import torch
    from tokenizers import Tokenizer

    from lightning_llm.model import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_str(tokenizer_json).get_vocab_size(), **config))
    return save_artifact(model, tokenizer_json, folder, manifest=new_manifest(produced_by="test",
                                                                              tokenizer_json=tokenizer_json))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs") / "data"


@pytest.fixture(scope="session")
def prepared(cache_root):
    """The default experiment's data, prepared exactly as `llm prepare` would."""
    from lightning_llm.stages.prepare import prepared_data

    cfg = compose_config("prepare", [f"paths.data_cache={cache_root}"])
    return prepared_data(cfg)
