"""End to end through the real `llm` command: prepare -> train -> generate, and the errors."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from conftest import LLM, TINY, llm


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_root, prepared):
    """One tiny training run shared by the tests below; it reuses the session's prepared data."""
    outputs = cache_root.parent
    run_dir = tmp_path_factory.mktemp("run")
    result = llm(["train", *TINY, f"hydra.run.dir={run_dir}"], outputs)
    return run_dir, outputs, result


def test_prepare_prints_the_cached_folder(prepared, cache_root):
    result = llm(["prepare"], cache_root.parent)
    assert result.stdout.strip().splitlines()[-1] == str(prepared.dir)
    assert "reusing" in result.stdout + result.stderr


def test_train_writes_every_artifact_and_the_loss_falls(trained):
    run_dir, _, _ = trained
    for name in (".hydra/config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "plots/loss.png", "samples.md", "run.json", "model/model.safetensors", "model/config.json",
                 "model/tokenizer.json"):
        assert (run_dir / name).exists(), name
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    train_loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val_loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train_loss) == 30 and len(val_loss) == 2
    assert sum(train_loss[-5:]) / 5 < sum(train_loss[:5]) / 5 - 0.3
    assert val_loss[-1] < val_loss[0]

    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"] == 30 and record["seed"] == 1337
    assert record["data"]["hash"].startswith("shakespeare-")
    assert record["metrics"]["best_val/loss"] == pytest.approx(min(val_loss), abs=1e-4)
    assert record["model"]["parameters"] > 0 and "torch" in record["versions"]
    assert (run_dir / "plots/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROMEO:" in (run_dir / "samples.md").read_text()


def test_generate_from_run_dir_and_from_checkpoint(trained):
    run_dir, outputs, _ = trained
    args = ["prompt=ROMEO:", "max_new_tokens=25", "temperature=0.8", "top_k=5", "seed=1"]
    first = llm(["generate", f"ckpt={run_dir}", *args], outputs).stdout
    again = llm(["generate", f"ckpt={run_dir}", *args], outputs).stdout
    assert first.startswith("ROMEO:") and len(first.strip()) >= 25 and first == again  # seeded
    from_folder = llm(["generate", f"ckpt={run_dir}/model", *args], outputs).stdout
    assert from_folder == first  # the exported safetensors folder holds the best checkpoint's weights


def test_resuming_from_a_checkpoint_of_another_shape_names_the_keys(trained):
    run_dir, outputs, _ = trained
    result = llm(["train", *TINY, "model.n_layer=3", f"ckpt_path={run_dir}/checkpoints/last.ckpt"], outputs,
                 check=False)
    assert result.returncode == 2
    assert "n_layer: checkpoint 2 vs config 3" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "model.no_such_key=1"], "Could not override 'model.no_such_key'"),
    (["train", "model=no_such_model"], "Could not find 'model/no_such_model'"),
    (["train", "model.n_head=5"], "n_embd (128) must be divisible by n_head (5)"),
    (["train", "model=gpt-nano", "model.block_size=1000000"], "block_size=1000000 is larger than the val split"),
    (["train", "trainer.max_steps=0"], "trainer.max_steps must be a whole number of at least 1"),
    (["train", "data.split.val=0.6", "data.split.test=0.5"], "must be in [0, 1) and sum below 1"),
    (["train", "trainer.precision=bogus"], "Precision 'bogus' is invalid"),
    (["generate", "ckpt=/no/such/run"], "does not exist"),
    (["generate", "ckpt=/no/such/run", "max_new_tokens=many"], "could not be converted to Integer"),
    (["generate", "ckpt=pyproject.toml"], "is not a lightning-llm checkpoint"),
    (["nonsense"], "unknown stage"),
])
def test_bad_input_fails_in_one_line(args, message, cache_root, prepared, tmp_path):
    run_dir = tmp_path / "refused"
    result = llm([*args, f"hydra.run.dir={run_dir}"], cache_root.parent, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # a refused run leaves no empty run dir behind


def test_prompt_with_unknown_characters_is_refused(trained):
    run_dir, outputs, _ = trained
    result = llm(["generate", f"ckpt={run_dir}", "prompt='ROMEO~'"], outputs, check=False)
    assert result.returncode == 2 and "never saw" in result.stderr and "'~'" in result.stderr


def test_help_lists_stages():
    result = subprocess.run(LLM + ["--help"], capture_output=True, text=True)
    assert result.returncode == 0 and all(s in result.stdout for s in ("prepare", "train", "generate"))


def run_cli(args, **kwargs):
    return subprocess.run(LLM + args, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("stage, present, absent", [
    ("train", ["model ", "gpt-nano", "gpt-micro*", "logger ", "none", "debug ", "fast", "max_steps:"],
     ["sweeps (sweep=<name>"]),
    ("eval", ["usage: llm eval ckpt=<run dir", "paths ", "lm:", "max_tokens:"], ["\n  model ", "\n  logger ",
                                                                                "\n  tokenizer "]),
    ("sweep", ["sweeps (sweep=<name>", "grid_lr_batch_dropout", "random ", "tpe_arch"], []),
])
def test_each_stage_help_lists_its_own_groups(stage, present, absent):
    result = run_cli([stage, "--help"])
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("config (override", 1)[0]
    for text in present:
        assert text in result.stdout, text
    for text in absent:
        assert text not in groups, text


def test_version_and_a_missing_mandatory_value_in_one_line():
    from importlib.metadata import version

    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"lightning-llm {version('lightning-llm')}"
    for stage, line in (("generate", "error: ckpt is required: pass ckpt=<run dir | .ckpt | model folder>"),
                        ("compare", "error: runs is required: pass runs=[<run dir>,<run dir>,...]"),
                        ("sweep", "error: sweep is required: pass sweep=<name>")):
        result = run_cli([stage])
        assert result.returncode == 2 and result.stderr.strip() == line, result.stderr


@pytest.mark.parametrize("args", [["train", "--help"], ["train", "--cfg", "job", "model=gpt-nano"],
                                  ["sweep", "--cfg", "job"], ["eval", "--help"]])
def test_help_and_cfg_never_import_lightning_or_torch(args):
    """What makes `--help` and `--cfg job` start in about a second instead of 4-7 (docs/benchmarks.md)."""
    result = subprocess.run([LLM[0], "-X", "importtime", *LLM[1:], *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "lightning", "optuna", "lightning.pytorch"}
    if "--cfg" in args:
        assert "experiment_name:" in result.stdout


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path, cache_root, prepared):
    outputs = cache_root.parent
    run_dir = tmp_path / "ddp-run"
    llm(["train", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        outputs)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"] == 30 and "ddp" in str(record["overrides"]["trainer"]["strategy"])
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    train_loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(train_loss) == 30  # one logger: rank zero's
    assert sum(train_loss[-5:]) / 5 < sum(train_loss[:5]) / 5 - 0.3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(tmp_path, cache_root, prepared):
    """Stop after 15 of 30 scheduled steps (same schedule), resume to 30: every loss must match."""
    outputs = cache_root.parent
    steps = ["trainer.max_steps=30", "optim.scheduler.total_steps=30", "trainer.val_check_interval=5",
             "experiment_name=resume_check"]
    whole, first_half, resumed = tmp_path / "whole", tmp_path / "first", tmp_path / "resumed"
    llm(["train", *TINY, *steps, f"hydra.run.dir={whole}"], outputs)
    llm(["train", *TINY, *steps, "trainer.max_steps=15", f"hydra.run.dir={first_half}"], outputs)
    llm(["train", *TINY, *steps, f"ckpt_path={first_half}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}"],
        outputs)

    def losses(run_dir, column):
        rows = csv.DictReader(open(run_dir / "metrics.csv"))
        return {int(r["step"]): float(r[column]) for r in rows if r.get(column)}

    for column in ("train/loss", "val/loss"):
        expected, got = losses(whole, column), losses(resumed, column)
        assert got and all(step >= 15 for step in got)
        assert {s: expected[s] for s in got} == pytest.approx(got, abs=1e-5)


def test_resume_auto_continues_the_newest_run_of_the_experiment(tmp_path, cache_root, prepared):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "data").symlink_to(cache_root)  # reuse the session's prepared data
    base = ["train", *TINY, "experiment_name=auto_resume", "optim.scheduler.total_steps=40"]
    fresh = llm([*base, "resume=auto"], outputs)
    assert "no checkpoint to continue" in fresh.stdout + fresh.stderr
    resumed = llm([*base, "resume=auto", "trainer.max_steps=40"], outputs)
    assert "resuming from" in resumed.stdout + resumed.stderr
    newest = max((outputs / "train" / "auto_resume").iterdir(), key=lambda p: p.stat().st_mtime)
    assert json.loads((newest / "run.json").read_text())["steps"] == 40
