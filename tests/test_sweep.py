"""`llm sweep` through the real command: pruning, resume, workers sharing one storage (SQLite and
PostgreSQL), failing and interrupted trials, the report and best.yaml, and the one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import LLM, compose_config, llm, llm_env
from omegaconf import OmegaConf
from optuna.trial import TrialState

from lightning_llm.sweep import Objective, SweepSpec, spent_trials
from lightning_llm.sweep.space import Dimension
from lightning_llm.sweep.study import (
    RETRY,
    is_surplus,
    process_key,
    reclaim_dead_trials,
    record_worker,
    with_installed_driver,
)

TINY = ["model=gpt-nano", "trainer.max_steps=10", "trainer.val_check_interval=5", "val_windows=8",
        "optim.scheduler.warmup_steps=2", "callbacks.samples.max_new_tokens=5", "trainer.log_every_n_steps=5"]
GOOD_LR, BAD_LR = 0.02, 1e-6  # after 5 steps: a clearly lower val loss, and next to none learned


@pytest.fixture
def outputs(tmp_path, cache_root, prepared):
    """An output root of its own that shares the session's prepared data."""
    root = tmp_path / "outputs"
    root.mkdir()
    (root / "data").symlink_to(cache_root)
    return root


def start(args, outputs: Path) -> subprocess.Popen:
    return subprocess.Popen(LLM + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=llm_env(outputs))


def write_sweep(path: Path, search_space: dict, sampler: dict, pruner: dict | None = None, **keys) -> str:
    spec = {"overrides": TINY, "search_space": search_space, "sampler": sampler,
            "pruner": pruner or {"name": "none"}, **keys}
    OmegaConf.save(OmegaConf.create(spec), path)
    return str(path)


def load(outputs: Path, name: str, storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{outputs / 'sweeps' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)


def test_a_grid_sweep_prunes_the_bad_trials_resumes_and_reports_a_best_yaml_that_trains(tmp_path, outputs,
                                                                                          monkeypatch, caplog, capfd):
    """Two grid points learn (val loss about 3.4 at step 5) and two learn next to nothing (4.52, the
    loss of a uniform guess): the threshold pruner stops those at the first validation, whatever
    order the grid runs in. The study runs 2 trials, then is continued to 4."""
    sweep = write_sweep(tmp_path / "grid.yaml",
                        {"optim.optimizer.lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]},
                         "trainer.gradient_clip_val": {"type": "categorical", "choices": [1.0, 0.5]}},
                        {"name": "grid"}, {"name": "threshold", "options": {"upper": 4.0}})
    command = [f"sweep={sweep}", "study_name=grid"]
    caplog.set_level(logging.INFO)
    assert sweep_in_process([*command, "n_trials=2"], outputs, monkeypatch) == 0
    assert len(load(outputs, "grid").trials) == 2
    assert sweep_in_process([*command, "n_trials=4"], outputs, monkeypatch) == 0  # continued to 4 in all
    shown = capfd.readouterr()
    assert "Epoch 0" not in shown.out + shown.err  # one progress bar, Optuna's: no trial draws its own

    trials = load(outputs, "grid").trials
    assert len(trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # each grid point once
    for t in trials:
        good = t.params["optim.optimizer.lr"] == GOOD_LR
        assert t.state == (TrialState.COMPLETE if good else TrialState.PRUNED), (t.number, t.params, t.state)
        assert t.last_step == (10 if good else 5)
        assert (Path(t.user_attrs["run_dir"]) / "metrics.csv").is_file()  # one run dir per trial
    assert "prepared data: wrote" not in caplog.text
    assert caplog.text.count("prepared data: reusing") == 2 + 4  # once before each run's trials, once per trial

    study_dir = outputs / "sweeps" / "grid"
    report = (study_dir / "report.md").read_text()
    pruned = next(t.number for t in trials if t.state == TrialState.PRUNED)
    assert "## Best trial" in report and f"| {pruned} | PRUNED |" in report and "pruned at step 5" in report
    for png in ("optimization_history.png", "parallel_coordinate.png", "intermediate_values.png"):
        assert (study_dir / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report

    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    run_dir = tmp_path / "best-run"
    llm(["train", "--config-dir", str(study_dir), "--config-name", "best", f"hydra.run.dir={run_dir}"], outputs)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["overrides"]["optim"]["optimizer"]["lr"] == best.params["optim.optimizer.lr"]
    assert record["overrides"]["trainer"]["gradient_clip_val"] == best.params["trainer.gradient_clip_val"]
    assert record["steps"] == 10 and record["model"]["n_layer"] == 2  # the sweep's base: gpt-nano, 10 steps
    assert record["metrics"]["best_val/loss"] == pytest.approx(best.value, abs=1e-4)  # the same run again

    (study_dir / "report.md").unlink()
    assert sweep_in_process([*command, "n_trials=4", "report_only=true"], outputs, monkeypatch) == 0
    assert (study_dir / "report.md").read_text() == report
    assert len(load(outputs, "grid").trials) == 4


def test_a_failing_trial_is_recorded_as_fail_and_the_study_goes_on(tmp_path, outputs, monkeypatch):
    sweep = write_sweep(tmp_path / "fail.yaml", {"model.n_head": {"type": "categorical", "choices": [3, 2]}},
                        {"name": "grid"})
    assert sweep_in_process([f"sweep={sweep}", "study_name=failing"], outputs, monkeypatch) == 0
    trials = {t.params["model.n_head"]: t for t in load(outputs, "failing").trials}
    assert trials[3].state == TrialState.FAIL
    assert "must be divisible by n_head (3)" in trials[3].user_attrs["fail_reason"]
    assert trials[2].state == TrialState.COMPLETE  # whichever ran first, the other still ran
    report = (outputs / "sweeps" / "failing" / "report.md").read_text()
    assert f"| {trials[3].number} | FAIL |" in report and "must be divisible by n_head (3)" in report


def test_two_workers_on_one_storage_run_exactly_n_trials_between_them(tmp_path, outputs):
    sweep = write_sweep(tmp_path / "random.yaml",
                        {"optim.optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                        {"name": "random"})
    command = ["sweep", f"sweep={sweep}", "study_name=shared", "n_trials=4"]
    workers = [start(command, outputs) for _ in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, out[-3000:]
    study = load(outputs, "shared")
    assert len(spent_trials(study)) == 4
    assert sorted(t.state.name for t in spent_trials(study)) == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in spent_trials(study)}) == 2


def wait_for_running_trial(outputs: Path, name: str, number: int, timeout=120) -> None:
    """Until trial `number` is inside training (its metrics.csv exists), so a signal lands mid-trial."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (outputs / "sweeps" / name / "trials" / str(number) / "metrics.csv").exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"trial {number} of {name} never started training")


@pytest.mark.slow
def test_interrupted_and_killed_trials_are_requeued_and_the_rerun_completes_the_study(tmp_path, outputs):
    """Ctrl-C, then kill -9 (its trial is found by its stale heartbeat), then the same command once more:
    the interrupted parameters run once to completion, and the study ends with n_trials in all."""
    sweep = write_sweep(tmp_path / "random.yaml",
                        {"optim.optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                        {"name": "random", "seed": 3}, heartbeat={"interval": 1, "grace_period": 2})
    command = ["sweep", f"sweep={sweep}", "study_name=resume", "n_trials=2", "trainer.max_steps=60"]
    interrupted = start(command, outputs)
    wait_for_running_trial(outputs, "resume", 0)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=60) != 0
    killed = start(command, outputs)
    wait_for_running_trial(outputs, "resume", 1)  # the queued copy of trial 0 runs first
    killed.kill()
    killed.wait(timeout=60)
    time.sleep(2)  # the grace period: the killed trial's heartbeat is now stale
    llm(command, outputs)

    trials = load(outputs, "resume").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[2].system_attrs["retry_history"] == [0, 1]
    assert trials[0].params == trials[1].params == trials[2].params != trials[3].params
    assert [t.number for t in spent_trials(load(outputs, "resume"))] == [2, 3]


# A worker in the middle of a trial: its heartbeat just recorded (well inside the grace period), and
# the attributes that the Objective's record_worker writes (its process_key read here by the test: importing
# the package in the worker would take seconds).
WORKER = """
import os, socket, sys
import optuna
storage = optuna.storages.RDBStorage(sys.argv[1], heartbeat_interval=10)
study = optuna.create_study(study_name=sys.argv[2], storage=storage)
trial = study.ask()
trial.suggest_float("optim.optimizer.lr", 1e-3, 3e-2, log=True)
storage.record_heartbeat(trial._trial_id)
trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
trial.set_user_attr("worker_process", input())
print("running", flush=True)
sys.stdin.read()
"""
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="tells processes apart through /proc")


@LINUX_PROC
def test_a_trial_whose_worker_was_killed_on_this_machine_is_run_again_without_waiting(tmp_path, outputs,
                                                                                     monkeypatch, caplog):
    """kill -9 mid-trial, then the same sweep at once (grace_period 30 s): the dead trial must not count
    as running ("nothing to run" with it stuck RUNNING); it is failed with the reason and its
    parameters run, so the study holds n_trials finished trials."""
    study_dir = outputs / "sweeps" / "killed"
    study_dir.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, f"sqlite:///{study_dir / 'study.db'}", "killed"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker.stdin.write(process_key(worker.pid) + "\n")
    worker.stdin.flush()
    assert worker.stdout.readline() == "running\n"
    worker.kill()
    worker.wait(timeout=30)
    assert [t.state for t in load(outputs, "killed").trials] == [TrialState.RUNNING]

    sweep = write_sweep(tmp_path / "random.yaml",
                        {"optim.optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                        {"name": "random"}, heartbeat={"interval": 10, "grace_period": 30})
    caplog.set_level(logging.INFO)
    assert sweep_in_process([f"sweep={sweep}", "study_name=killed", "n_trials=1"], outputs, monkeypatch) == 0

    trials = load(outputs, "killed").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    dead, rerun = trials
    assert dead.user_attrs["fail_reason"].startswith(f"worker {socket.gethostname()}:{worker.pid} died")
    assert rerun.params == dead.params and rerun.system_attrs["retry_history"] == [0]
    assert rerun.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert [t.number for t in spent_trials(load(outputs, "killed"))] == [1]
    assert "nothing to run" not in caplog.text and "trial 0: its worker" in caplog.text


@LINUX_PROC
def test_only_trials_whose_process_on_this_machine_is_gone_are_reclaimed():
    """A dead worker, a reused pid (another start time) and a killed worker not yet reaped are reclaimed;
    a live worker, another host, another boot or container, and a trial with no worker yet are left
    to the heartbeat."""
    child, zombie = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
                     for _ in range(2)]
    child_key, zombie_key = process_key(child.pid), process_key(zombie.pid)
    child.communicate(timeout=30)  # exited and reaped: its pid names no process of ours now
    zombie.kill()  # killed, and not yet reaped by its parent (this process)
    deadline = time.time() + 30
    while process_key(zombie.pid) is not None and time.time() < deadline:
        time.sleep(0.01)
    host, mine = socket.gethostname(), process_key(os.getpid())
    boot, namespace, started = mine.split()
    workers = {"elsewhere": ("other-host:1", mine), "live": (f"{host}:{os.getpid()}", mine),
               "reused pid": (f"{host}:{os.getpid()}", f"{boot} {namespace} {int(started) + 1}"),
               "dead": (f"{host}:{child.pid}", child_key),
               "other boot": (f"{host}:{child.pid}", child_key.replace(boot, "another-boot")), "none yet": None,
               "not reaped": (f"{host}:{zombie.pid}", zombie_key)}
    study = optuna.create_study()
    for worker in workers.values():
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        if worker:
            trial.set_user_attr("worker", worker[0])
            trial.set_user_attr("worker_process", worker[1])
    assert reclaim_dead_trials(study) == [2, 3, 6]
    zombie.wait(timeout=30)
    trials = study.get_trials()
    assert [t.state.name for t in trials[:7]] == ["RUNNING", "RUNNING", "FAIL", "FAIL", "RUNNING", "RUNNING", "FAIL"]
    assert trials[3].user_attrs["fail_reason"].startswith(f"worker {host}:{child.pid} died")
    copies = trials[7:]  # queued with the same parameters, naming no worker until one takes them
    assert [(t.state, t.params, RETRY.retry_history(t)) for t in copies] == \
        [(TrialState.WAITING, trials[n].params, [n]) for n in (2, 3, 6)]
    assert all("worker" not in t.user_attrs and "worker_process" not in t.user_attrs for t in copies)
    assert [t.number for t in spent_trials(study)] == [0, 1, 4, 5, 7, 8, 9]
    assert reclaim_dead_trials(study) == []

    trial = study.ask()  # the Objective's own record: this process, alive
    record_worker(trial)
    assert trial.user_attrs["worker"] == f"{host}:{os.getpid()}" and trial.user_attrs["worker_process"] == mine


def start_postgres(workdir: Path) -> tuple[str, callable]:
    """A throwaway PostgreSQL server on a free loopback port, run by an unprivileged user (initdb
    refuses root); returns its URL and a function that stops it."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not on PATH")
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user and not shutil.which("runuser"):
        pytest.skip("initdb refuses to run as root and runuser is missing")
    workdir.mkdir()
    if as_user:
        shutil.chown(workdir, "nobody")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = workdir / "data"
    init = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True,
                          text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb could not create a cluster: {init.stderr.strip().splitlines()[-1:]}")
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(workdir / "log"), "-o", options, "-w", "start"],
                   check=True, capture_output=True)
    stop = lambda: subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(outputs):
    workdir = Path(tempfile.mkdtemp(prefix="llm-pg-"))  # not under pytest's root-only tmp: the server user writes it
    workdir.chmod(0o755)
    try:
        url, stop = start_postgres(workdir / "pg")
        try:
            sweep = str(Path(__file__).parents[1] / "sweeps" / "random.yaml")
            command = ["sweep", f"sweep={sweep}", "study_name=pg", f"storage={url}", "n_trials=4", *TINY]
            workers = [start(command, outputs) for _ in range(2)]
            for worker in workers:
                out, _ = worker.communicate(timeout=300)
                assert worker.returncode == 0, out[-3000:]
            study = load(outputs, "pg", storage=with_installed_driver(url))
            assert len(spent_trials(study)) == 4
            assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in spent_trials(study))
            assert len({t.user_attrs["worker"] for t in spent_trials(study)}) == 2
        finally:
            stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_hydra_multirun_still_writes_one_run_dir_per_job(outputs):
    llm(["train", "-m", "optim.optimizer.lr=1e-2,3e-3", "experiment_name=multi", *TINY], outputs)
    records = [json.loads(p.read_text()) for p in sorted((outputs / "train" / "multi").glob("multirun_*/*/run.json"))]
    assert [r["overrides"]["optim"]["optimizer"]["lr"] for r in records] == [1e-2, 3e-3]
    assert len({r["run_dir"] for r in records}) == 2


def test_a_trial_asked_when_the_budget_is_spent_stands_down():
    """Two workers finishing together may both ask for the last trial: the later one must not run."""
    study = optuna.create_study()
    for x in (1.0, 2.0):
        study.enqueue_trial({"x": x})
        first = study.ask()
        first.suggest_float("x", 0, 3)
        study.tell(first, x)
    interrupted = study.ask()
    interrupted.suggest_float("x", 0, 3)
    RETRY(study, study.tell(interrupted, state=TrialState.FAIL))  # requeued: the copy counts, not the original
    assert [t.number for t in spent_trials(study)] == [0, 1, 3]
    late = study.ask()  # takes the queued copy
    assert late.number == 3 and not is_surplus(study, late, 3)
    surplus = study.ask()
    assert surplus.number == 4 and is_surplus(study, surplus, 3) and not is_surplus(study, surplus, 4)


def test_with_wandb_each_trial_is_its_own_run_in_the_study_group(tmp_path):
    spec = SweepSpec(study_name="wb", search_space={"optim.optimizer.lr": Dimension("float", 1e-3, 1e-2)}, n_trials=1)
    trial = optuna.create_study().ask()
    overrides = ["logger=wandb", *Objective(spec, [], tmp_path, wandb=True).trial_overrides(trial)]
    cfg = compose_config("train", overrides)
    assert cfg.logger.wandb.group == "wb" and cfg.logger.wandb.name == "wb-trial-0"
    assert cfg.optim.optimizer.lr == trial.params["optim.optimizer.lr"]


@pytest.mark.parametrize("sweep_keys, extra, message", [
    ({"sampler": {"name": "annealing"}}, [], "unknown sampler 'annealing': choose one of grid, random, tpe"),
    ({"pruner": {"name": "sometimes"}}, [], "unknown pruner 'sometimes': choose one of median, hyperband, threshold"),
    ({"search_space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}, [],
     "search_space.optim.lr: Could not override 'optim.lr'"),
    ({"sampler": {"name": "grid"}, "search_space": {"model.dropout": {"type": "categorical", "choices": []}}}, [],
     "search_space.model.dropout: a categorical entry needs a non-empty list of choices"),
    ({}, ["storage=postgresql://nobody@127.0.0.1:9/none"], "cannot open the study storage postgresql"),
    ({}, ["optim.optimizer.lr=0.1"], "search_space.optim.optimizer.lr is searched by this sweep"),
    ({}, ["n_trials=0"], "n_trials must be a whole number of at least 1"),
    ({}, ["trainer=ddp"], "a sweep trains each trial on one device"),
    ({}, ["report_only=true"], "no study 'bad'"),
])
def test_bad_input_fails_in_one_line_before_any_trial(tmp_path, outputs, monkeypatch, capsys, sweep_keys, extra,
                                                      message):
    space = {"optim.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    sweep = write_sweep(tmp_path / "bad.yaml", sweep_keys.pop("search_space", space),
                        sweep_keys.pop("sampler", {"name": "random"}), sweep_keys.pop("pruner", None), n_trials=2)
    assert sweep_in_process(["sweep=" + sweep, "study_name=bad", *extra], outputs, monkeypatch) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (outputs / "sweeps" / "bad" / "trials").exists()


def sweep_in_process(args: list[str], outputs: Path, monkeypatch) -> int:
    """`llm sweep <args>` in this process, where the imports are already paid for: its exit code.
    Hydra leaves this process's logging as it is (caplog reads it)."""
    from lightning_llm.stages import sweep

    monkeypatch.setenv("LLM_OUTPUT_ROOT", str(outputs))
    monkeypatch.setattr(sys, "argv", ["llm", *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    try:
        sweep.main()
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.mark.parametrize("n_trials, importances_shown", [(4, False), (12, True)])
def test_the_report_draws_the_slice_plot_and_importances_only_from_ten_trials(tmp_path, n_trials,
                                                                                importances_shown):
    """A study of a known function (no training): below ten completed trials the report says why it
    shows no importances and draws none; from ten it shows them, and x, which drives y, ranks first."""
    from lightning_llm.sweep.report import write_report

    spec = SweepSpec(study_name="slice", search_space={"x": Dimension(type="float", low=0.0, high=1.0),
                                                       "noise": Dimension(type="float", low=0.0, high=1.0)},
                     n_trials=n_trials)
    study = optuna.create_study(study_name="slice", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("definition", {"objective": {"metric": "best_val/loss"}})
    study.optimize(lambda t: 10 * t.suggest_float("x", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1),
                   n_trials=n_trials)
    report = write_report(study, spec, tmp_path, "sqlite:///study.db").read_text()
    assert (tmp_path / "slice.png").read_bytes()[:4] == b"\x89PNG" and "](slice.png)" in report
    section = report.split("## Parameter importances", 1)[1].split("##", 1)[0]
    if importances_shown:
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert rows[0].startswith("| `x`") and (tmp_path / "param_importances.png").is_file()
    else:
        assert "not shown: 4 completed trials, and importances are computed from 10 or more" in section
        assert not (tmp_path / "param_importances.png").exists()
