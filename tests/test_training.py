"""Training at full strength: schedules, the NaN guard, monitoring, loggers, early stopping,
accumulation, a killed run that resumes, FSDP on two CPU processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import LLM, TINY, compose_config, llm

from lightning_llm.cli import shared_run_dir
from lightning_llm.training.module import LanguageModel, NonFiniteLoss
from lightning_llm.training.optim import warmup_cosine, warmup_stable_decay


def rates(factory, steps=100, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = factory(optimizer, total_steps=steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly():
    lr = rates(warmup_stable_decay, warmup_steps=10, decay_ratio=0.2, min_lr_ratio=0.0)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(r == 1.0 for r in lr[10:80])  # the plateau
    decay = lr[80:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(1 / 20, abs=1e-9)
    cosine = rates(warmup_cosine, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine[50] < 1.0 and cosine[-1] == pytest.approx(0.1, abs=1e-3)


def metrics(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def column(rows, name):
    return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}


def train_in_process(tmp_path, cache_root, overrides, extra_callbacks=()):
    from lightning_llm.stages.train import train

    run_dir = tmp_path / "run"
    cfg = compose_config("train", [*TINY, f"paths.data_cache={cache_root}", f"paths.output_root={tmp_path}",
                                   f"paths.run_dir={run_dir}", *overrides])
    return run_dir, train(cfg, extra_callbacks)


@pytest.mark.parametrize("deferred", [False, True])  # checked at once (CPU), or on the device and read later (GPU)
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache_root, prepared, deferred,
                                                                      monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setattr(LanguageModel, "deferred_nan_check", deferred)

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 12:
                with torch.no_grad():
                    pl_module.model.tok_emb.weight[0, 0] = float("nan")

    with pytest.raises(NonFiniteLoss, match="non-finite loss .* at step 12"):
        train_in_process(tmp_path, cache_root, ["callbacks.periodic_checkpoint.every_n_train_steps=10"], [Poison()])
    checkpoint = torch.load(tmp_path / "run/checkpoints/periodic.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_a_deferred_check_gives_a_non_finite_step_zero_gradients_and_stops_at_the_next_read(
        tmp_path, cache_root, prepared, monkeypatch):
    """The GPU path (no per-step sync): a NaN loss at step 12 leaves every weight finite, and the run
    stops with that step's number before the checkpoint of step 20 is written."""
    import lightning.pytorch as pl

    monkeypatch.setattr(LanguageModel, "deferred_nan_check", True)
    seen = {}

    class NanLossAtStep12(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            model = pl_module.model
            if trainer.global_step == 12:
                forward = type(model).forward
                model.forward = lambda *a, **k: (lambda out: (out[0], out[1] * float("nan")))(forward(model, *a, **k))
            elif "forward" in vars(model):
                del model.forward
                seen["finite after the bad step"] = all(torch.isfinite(p).all() for p in model.parameters())

    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at step 12"):
        train_in_process(tmp_path, cache_root, ["callbacks.periodic_checkpoint.every_n_train_steps=10"],
                         [NanLossAtStep12()])
    assert seen == {"finite after the bad step": True}
    checkpoint = torch.load(tmp_path / "run/checkpoints/periodic.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10


def test_throughput_mfu_and_grad_norm_are_logged_and_tensorboard_writes(tmp_path, cache_root, prepared):
    import lightning.pytorch as pl

    class RecordNorms(pl.Callback):  # the true pre-clipping norm of every step
        norms: dict[int, float] = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.norms[trainer.global_step] = torch.nn.utils.get_total_norm(grads).item()

    run_dir, _ = train_in_process(tmp_path, cache_root, ["logger=tensorboard", "trainer.log_every_n_steps=5"],
                                  [RecordNorms()])
    rows = metrics(run_dir)
    tokens_per_s, mfu, norms = column(rows, "perf/tokens_per_s"), column(rows, "perf/mfu"), column(rows, "train/grad_norm")
    assert len(tokens_per_s) == 6 and sorted(tokens_per_s) == sorted(mfu) == sorted(column(rows, "train/loss"))
    assert all(v > 100 for v in tokens_per_s.values()) and all(0 < v < 1 for v in mfu.values())
    assert sorted(norms) == sorted(column(rows, "train/loss"))  # each logged step's own norm, not a stale one
    assert all(v == pytest.approx(RecordNorms.norms[step], rel=1e-4) for step, v in norms.items())
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_early_stopping_ends_the_run_when_val_loss_stalls(tmp_path, cache_root, prepared):
    run_dir, _ = train_in_process(tmp_path, cache_root, [
        "trainer.max_steps=60", "trainer.val_check_interval=10",
        "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=10.0"])  # nothing improves by 10
    assert len(column(metrics(run_dir), "val/loss")) == 2
    assert json.loads((run_dir / "run.json").read_text())["steps"] == 20


def test_tokens_per_step_sets_gradient_accumulation(tmp_path, cache_root, prepared):
    run_dir, _ = train_in_process(tmp_path, cache_root, ["tokens_per_step=1024", "trainer.max_steps=6",
                                                         "trainer.val_check_interval=6"])  # 16 x 32 tokens per batch
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"] == 6 and record["tokens_seen"] == 6 * 1024
    result = llm(["train", *TINY, "tokens_per_step=1000"], cache_root.parent, check=False)
    assert result.returncode == 2 and "error: tokens_per_step=1000 is not a multiple of" in result.stderr


def test_wandb_offline_logs_the_config_and_a_resume_continues_the_same_run(tmp_path, cache_root, prepared):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "data").symlink_to(cache_root)
    base = ["train", *TINY, "logger=wandb", "experiment_name=wandb_check", "tags=[check]",
            "optim.scheduler.total_steps=40"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    llm(base, outputs, env=env)
    llm([*base, "resume=auto", "trainer.max_steps=40"], outputs, env=env)
    first, second = sorted((outputs / "train" / "wandb_check").iterdir())
    run_id = (first / "wandb_run_id").read_text()
    assert (second / "wandb_run_id").read_text() == run_id
    assert list((second / "wandb").glob(f"offline-run-*-{run_id}")), "the resumed run must write into the same W&B run"
    record = next((first / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")).read_bytes()
    assert b"wandb_check" in record and b"n_layer" in record and b"val_windows" in record  # the full config


def test_a_killed_run_resumes_from_its_periodic_checkpoint_with_the_same_losses(tmp_path, cache_root, prepared):
    outputs = cache_root.parent
    common = [*TINY, "trainer.max_steps=40", "optim.scheduler.total_steps=40", "trainer.val_check_interval=20",
              "callbacks.periodic_checkpoint.every_n_train_steps=10", "experiment_name=killed_check"]
    whole = tmp_path / "whole"
    llm(["train", *common, f"hydra.run.dir={whole}"], outputs)

    killed = tmp_path / "killed"
    env = {"LLM_OUTPUT_ROOT": str(outputs), "WANDB_MODE": "disabled"}
    process = subprocess.Popen([*LLM, "train", *common, "callbacks.samples.max_new_tokens=2000",
                                f"hydra.run.dir={killed}"], env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    periodic = killed / "checkpoints/periodic.ckpt"
    deadline = time.time() + 240
    while not periodic.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert periodic.exists() and not (killed / "run.json").exists()  # it died mid-run
    step = torch.load(periodic, weights_only=True)["global_step"]

    resumed = tmp_path / "resumed"
    llm(["train", *common, f"ckpt_path={periodic}", f"hydra.run.dir={resumed}"], outputs)
    expected, got = column(metrics(whole), "train/loss"), column(metrics(resumed), "train/loss")
    assert sorted(got) == list(range(step, 40))
    assert {s: expected[s] for s in got} == pytest.approx(got, abs=1e-5)


def test_fsdp_on_two_cpu_processes_trains_one_run_that_resumes_on_one_process(tmp_path, cache_root, prepared):
    outputs = cache_root.parent
    run_dir = tmp_path / "fsdp-run"
    llm(["train", *TINY, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        outputs)
    rows = metrics(run_dir)
    train_loss = list(column(rows, "train/loss").values())
    assert len(train_loss) == 30 and sum(train_loss[-5:]) / 5 < sum(train_loss[:5]) / 5 - 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdp-run"]  # one run dir, not one per rank
    resumed = tmp_path / "resumed"
    llm(["train", *TINY, "trainer.max_steps=35", "optim.scheduler.total_steps=30",
         f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}"], outputs)
    assert json.loads((resumed / "run.json").read_text())["steps"] == 35


@pytest.mark.parametrize("env, expected", [
    ({"TORCHELASTIC_RUN_ID": "abc"}, "torchrun_abc"),
    ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4"}, "slurm_42"),
    ({}, None),
])
def test_every_rank_of_a_torchrun_or_slurm_job_names_the_same_run_dir(monkeypatch, env, expected):
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    overrides = shared_run_dir(["model=gpt-nano"])
    assert (overrides[0].endswith(expected) if expected else overrides == [])
    assert shared_run_dir(["hydra.run.dir=/x"]) == []


# ---- the researcher's loop: a short run has results, config a Lightning user expects ------

def test_a_short_run_validates_at_its_last_step_and_loads_back(tmp_path, cache_root, prepared):
    """max_steps below val_check_interval: validated at the end anyway, so a val metric, best.ckpt and
    loss.png (learning rate panel included) exist; a Lightning user's load_from_checkpoint works."""
    import matplotlib.image

    from lightning_llm.errors import UserError
    from lightning_llm.training.module import LanguageModel

    run_dir, result = train_in_process(tmp_path, cache_root, ["trainer.max_steps=7", "trainer.val_check_interval=500",
                                                              "trainer.limit_val_batches=2"])
    assert list(column(metrics(run_dir), "val/loss")) == [6]  # once, at the last step (Lightning counts from 0)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"] == 7 and record["metrics"]["best_val/loss"] == pytest.approx(result["val/loss"], abs=1e-5)
    assert (run_dir / "checkpoints/best.ckpt").is_file()
    height, width, _ = matplotlib.image.imread(run_dir / "plots/loss.png").shape
    assert height > 0.7 * width  # two panels: the loss, and below it the learning rate

    model = LanguageModel.load_from_checkpoint(run_dir / "checkpoints/best.ckpt")
    saved = torch.load(run_dir / "checkpoints/best.ckpt", weights_only=True)
    assert model.tokenizer_json == saved["tokenizer_json"]
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in saved["state_dict"].items())
    with pytest.raises(UserError, match="weights_only=True only"):
        LanguageModel.load_from_checkpoint(run_dir / "checkpoints/best.ckpt", weights_only=False)


def test_debug_fast_runs_lightnings_fast_dev_run_without_plus(tmp_path, cache_root, prepared):
    run_dir, _ = train_in_process(tmp_path, cache_root, ["debug=fast"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"] == 2 and record["overrides"]["trainer"]["fast_dev_run"] == 2
    assert not (run_dir / "metrics.csv").exists()  # fast_dev_run keeps no log


@pytest.mark.parametrize("overrides, expected", [
    (["debug=overfit"], {"overfit_batches": 1}),
    (["debug=profile"], {"max_steps": 50}),
    (["trainer.fast_dev_run=true", "trainer.limit_val_batches=4", "trainer.overfit_batches=2",
      "trainer.profiler=simple"], {"fast_dev_run": True, "limit_val_batches": 4, "overfit_batches": 2,
                                   "profiler": "simple"}),
])
def test_lightning_flags_and_the_debug_group_compose_without_plus(overrides, expected):
    cfg = compose_config("train", overrides)
    assert {key: cfg.trainer[key] for key in expected} == expected
    if overrides == ["debug=profile"]:
        assert cfg.trainer.profiler._target_ == "lightning.pytorch.profilers.SimpleProfiler"


def test_logger_none_keeps_only_the_csv_log():
    assert set(compose_config("train", ["logger=none"]).logger) == {"csv"}
    assert set(compose_config("train", ["logger=many", "logger=none"]).logger) == {"csv"}


def test_tensorboard_and_wandb_get_the_loss_plot_as_an_image_and_the_samples(tmp_path, cache_root, prepared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "data").symlink_to(cache_root)
    run_dir = tmp_path / "run"
    llm(["train", *TINY, "logger=many", "trainer.max_steps=4", "trainer.val_check_interval=4",
         "callbacks.samples.max_new_tokens=8", f"hydra.run.dir={run_dir}"], outputs,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert "plots/loss" in events.Tags()["images"]
    assert any(tag.startswith("samples") for tag in events.Tags()["tensors"])
    run_id = (run_dir / "wandb_run_id").read_text()
    record = next((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")).read_bytes()
    assert b"plots/loss" in record and b"samples" in record and b"table-file" in record
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/files/media/images/plots/loss_*.png"))


def test_wandb_run_names_are_unique_and_a_multirun_is_one_group(tmp_path):
    from lightning_llm.training.callbacks import wandb_names

    single = wandb_names(tmp_path / "exp" / "2026-12-03_07-14-54_19892", "exp")
    assert single == ("exp-2026-12-03_07-14-54_19892", "exp")
    jobs = [wandb_names(tmp_path / "exp" / "multirun_2026-12-03_07-14-54_19892" / str(n), "exp") for n in (0, 1)]
    assert jobs[0][0] != jobs[1][0] and jobs[0][1] == jobs[1][1] == "exp-multirun_2026-12-03_07-14-54_19892"
    cfg = compose_config("train", ["logger=wandb"])
    assert cfg.logger.wandb.name is None and cfg.logger.wandb.group is None  # filled from the run dir by build
