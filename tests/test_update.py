"""llm update: the live version continued on new data with replay, gated on both domains' held-out
loss; an update that helps becomes live, one that forgets too much is registered but refused and
the live version stays; a stale parent never becomes live. Rollback is tested in test_registry.py.
A tiny random base on the built-in corpus's tokenizer stands in for a trained one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config, llm

NEW_DATA = ["data=shakespeare", "data.genres=[poem]", "data.name=poems"]  # held-out works as the "new domain"
FAST = ["batch_size=8", "trainer.max_steps=12", "trainer.val_check_interval=6", "trainer.log_every_n_steps=1",
        "val_windows=8", "finetune.eval_windows=8", "callbacks.samples.max_new_tokens=8", "optim.optimizer.lr=1e-2",
        "optim.scheduler.warmup_steps=2", "~callbacks.early_stopping"]


@pytest.fixture
def registry(tmp_path, prepared):
    """Registry `demo` under tmp_path/out whose live v1 is a gpt-nano on the default corpus's data."""
    from lightning_llm.model import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact
    from lightning_llm.registry import Registry

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=prepared.meta["vocab_size"], block_size=64, n_layer=2, n_head=2, n_embd=32)
    tokenizer_json = prepared.tokenizer_path.read_text()
    manifest = new_manifest(produced_by="test", tokenizer_json=tokenizer_json, data_hash=prepared.dir.name)
    folder = save_artifact(GPT(config), tokenizer_json, tmp_path / "base" / "model", manifest=manifest)
    registry = Registry(tmp_path / "out", "demo")
    assert registry.promote(source=folder, reason="first") == "v1"
    return registry


def test_an_update_that_helps_is_promoted_with_its_record(tmp_path, cache_root, prepared, registry, capsys):
    from lightning_llm.stages.update import update

    run_dir = tmp_path / "run"
    cfg = compose_config("update", ["name=demo", *NEW_DATA, *FAST, "update.replay=0.25", "update.max_forgetting=0.5",
                                    f"paths.data_cache={cache_root}", f"paths.output_root={tmp_path / 'out'}",
                                    f"paths.run_dir={run_dir}"])
    result = update(cfg)
    assert result["version"] == "v2" and result["promoted"] and registry.live == "v2"
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("registry demo: v2 is live (was v1): new-domain loss ")
    manifest = registry.manifest("v2")
    info, record = manifest["registry"], manifest["update"]
    new_hash = json.loads((run_dir / "run.json").read_text())["data"]["hash"]
    assert info["parent_version"] == "v1" and info["data"] == [prepared.dir.name, new_hash]
    assert info["eval"]["best_val/loss"] > 0 and manifest["parent"] == str(registry.path("v1"))
    assert record["promoted"] and record["gate"]["passed"] and record["parent_version"] == "v1"
    assert record["replay"] == 0.25 and record["replay_data"] == [prepared.dir.name] == [record["old_domain"]]
    gate = record["gate"]
    assert gate["new_domain"]["after"] < gate["new_domain"]["before"]
    assert gate["old_domain"]["change"] <= 0.5 and record["why"] == gate["reason"]
    assert [(e["event"], e["version"], e["from"]) for e in registry.state()["events"]] == \
        [("promote", "v1", None), ("promote", "v2", "v1")]


def test_an_update_that_forgets_too_much_is_registered_but_the_live_version_stays(tmp_path, cache_root, registry):
    before = registry.path("v1")
    weights = (before / "model.safetensors").read_bytes()
    outputs = tmp_path / "out"
    result = llm(["update", "name=demo", *NEW_DATA, *FAST, "update.replay=0", "update.max_forgetting=-1",
                  f"paths.data_cache={cache_root}"], outputs)
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("registry demo: v2 registered, not promoted (v1 stays live): old-domain loss ")
    assert "worsened by more than update.max_forgetting=-1" in line
    assert registry.live == "v1" and (before / "model.safetensors").read_bytes() == weights
    record = registry.manifest("v2")["update"]
    assert not record["promoted"] and not record["gate"]["passed"] and record["why"] in line
    assert record["replay_data"] == [] and registry.state()["events"][-1]["event"] == "refused"
    listing = llm(["registry", "list", "name=demo"], outputs).stdout
    assert "| v1 (live) |" in listing and "| v2 | v1 | finetune |" in listing

    refused = llm(["update", "name=nope", *NEW_DATA, f"paths.data_cache={cache_root}"], outputs, check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == \
        f"error: no registry 'nope' under {outputs / 'registry'} (registries: demo)"


def test_a_passing_update_whose_parent_is_no_longer_live_is_not_promoted(tmp_path, registry):
    from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
    from lightning_llm.registry.update import UpdateConfig, gate, register

    base = load_artifact(registry.path("v1"))
    second = save_artifact(base.model, base.tokenizer_json, tmp_path / "other" / "model",
                           manifest=new_manifest(produced_by="test", tokenizer_json=base.tokenizer_json))
    registry.promote(source=second, reason="another update came first")  # v2 live while ours trained from v1
    losses = [{"domain": "new", "before": 3.0, "after": 2.0, "change": -1.0},
              {"domain": "base", "before": 2.0, "after": 2.01, "change": 0.01}]
    verdict = gate(losses, UpdateConfig(max_forgetting=0.05))
    assert verdict.passed
    ours = save_artifact(base.model, base.tokenizer_json, tmp_path / "ours" / "model",
                         manifest=new_manifest(produced_by="test", tokenizer_json=base.tokenizer_json))
    version, promoted, why = register(registry, model=ours, parent="v1", verdict=verdict, record={}, lock_wait=0)
    assert (version, promoted, registry.live) == ("v3", False, "v2")
    assert why.startswith("the live version changed from v1 to v2 during the update")
    assert registry.manifest("v3")["registry"]["parent_version"] == "v1"

    refused = gate([{"domain": "new", "before": 3.0, "after": 3.1, "change": 0.1},
                    {"domain": "base", "before": 2.0, "after": 2.0, "change": 0.0}], UpdateConfig())
    assert not refused.passed and refused.reason.startswith("new-domain loss 3.0000 -> 3.1000 did not fall")


def test_replay_draws_its_share_of_windows_from_the_old_data():
    from lightning_llm.registry.update import ReplayWindows

    new, old = np.zeros(1000, dtype=np.uint16), np.ones(1000, dtype=np.uint16)
    stream = iter(ReplayWindows(new, old, 0.3, block_size=8, batch_size=64, seed=0))
    batches = [next(stream) for _ in range(50)]
    share = float(np.mean([x[:, 0].float().mean() for x, _ in batches]))
    assert 0.27 < share < 0.33 and all(bool(((x == 0).all(1) | (x == 1).all(1)).all()) for x, _ in batches)
    again = next(iter(ReplayWindows(new, old, 0.3, block_size=8, batch_size=64, seed=0, start_batch=7)))
    assert torch.equal(again[0], batches[7][0])  # a resumed run sees the batch it would have
