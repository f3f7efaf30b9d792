"""llm registry: versions copied in whole, one live, promote and rollback recorded, and every change
atomic: a held lock, a stale expectation or a crash mid-copy changes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import llm

from lightning_llm.errors import UserError


def model_folder(path, seed: int, data_hash: str):
    from lightning_llm.model import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact

    torch.manual_seed(seed)
    tokenizer_json = json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1},
                                                             "unk_token": "a"}})
    config = GPTConfig(vocab_size=2, block_size=8, n_layer=1, n_head=1, n_embd=8)
    return save_artifact(GPT(config), tokenizer_json, path,
                         manifest=new_manifest(produced_by="test", tokenizer_json=tokenizer_json, data_hash=data_hash))


@pytest.fixture
def models(tmp_path):
    return [model_folder(tmp_path / f"m{i}", seed=i, data_hash=f"data-{i}") for i in range(3)]


def test_promote_and_rollback_keep_one_live_version_and_its_history(tmp_path, models):
    from lightning_llm.model.io import load_artifact
    from lightning_llm.registry import Registry, list_registries

    registry = Registry(tmp_path / "out", "shakespeare")
    assert registry.promote(source=models[0], reason="first") == "v1"
    assert registry.promote(source=models[1], reason="histories") == "v2"
    assert registry.live == "v2" and registry.versions() == ["v1", "v2"]
    info = registry.manifest("v2")["registry"]
    assert info["parent_version"] == "v1" and info["data"] == ["data-0", "data-1"]
    assert info["source"] == str(models[1].resolve())
    for version, source in (("v1", models[0]), ("v2", models[1])):  # each version is the artifact, whole
        for name, weight in load_artifact(source).model.state_dict().items():
            assert torch.equal(load_artifact(registry.path(version)).model.state_dict()[name], weight)

    assert registry.rollback(reason="worse on the old plays") == "v1" and registry.live == "v1"
    with pytest.raises(UserError, match="nothing to roll back to"):
        registry.rollback()
    assert registry.promote(version="v2", reason="fixed") == "v2"
    assert registry.promote(source=models[2]) == "v3" and registry.manifest("v3")["registry"]["parent_version"] == "v2"
    assert registry.rollback() == "v2" and registry.rollback() == "v1"  # each step back to what was live before
    events = registry.state()["events"]
    assert [(e["event"], e["version"], e["from"]) for e in events] == [
        ("promote", "v1", None), ("promote", "v2", "v1"), ("rollback", "v1", "v2"), ("promote", "v2", "v1"),
        ("promote", "v3", "v2"), ("rollback", "v2", "v3"), ("rollback", "v1", "v2")]
    assert events[2]["reason"] == "worse on the old plays"
    assert [r.name for r in list_registries(tmp_path / "out")] == ["shakespeare"]


def test_a_second_writer_a_stale_expectation_or_a_crash_changes_nothing(tmp_path, models, monkeypatch):
    from lightning_llm.artifacts import exclusive
    from lightning_llm.registry import Registry

    registry = Registry(tmp_path / "out", "r")
    registry.promote(source=models[0])
    before = (registry.dir / "registry.json").read_text()

    with exclusive(registry.dir):  # another update holds the registry: this one is refused at once
        with pytest.raises(UserError, match=r"another process .* \(nothing changed\)"):
            registry.promote(source=models[1])
    with pytest.raises(UserError, match="live version is v1, not v2"):
        registry.promote(source=models[1], expect_live="v2")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copy2", crash)
    with pytest.raises(OSError):
        registry.promote(source=models[1])
    monkeypatch.undo()
    assert (registry.dir / "registry.json").read_text() == before and registry.versions() == ["v1"]
    assert [p.name for p in (registry.dir / "versions").iterdir()] == ["v1"]  # no half-copied folder left
    assert registry.promote(source=models[1], expect_live="v1") == "v2"


def test_the_cli_takes_the_action_as_its_first_word(tmp_path, models):
    outputs = tmp_path / "out"
    result = llm(["registry", "promote", "name=demo", f"source={models[0]}", "reason=first"], outputs)
    assert result.stdout.strip().startswith("registry demo: v1 is live (was none)")
    listing = llm(["registry", "list", "name=demo"], outputs).stdout
    assert "| v1 (live) | - | test | data-0 |" in listing
    result = llm(["registry", "rollback", "name=nope"], outputs, check=False)
    assert result.returncode == 2 and result.stderr.strip() == \
        f"error: no registry 'nope' under {outputs / 'registry'} (registries: demo)"


def test_a_finished_run_dir_is_promoted_by_its_model_folder_not_its_checkpoint(tmp_path):
    from lightning_llm.registry import Registry

    run = tmp_path / "run"
    model = model_folder(run / "model", seed=0, data_hash="data-0")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"a training checkpoint")
    registry = Registry(tmp_path / "out", "runs")
    assert registry.promote(source=run) == "v1"
    assert registry.manifest("v1")["registry"]["source"] == str(model.resolve())
