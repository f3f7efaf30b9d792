"""The Optuna study behind a sweep: its storage, sampler and pruner, and the trial budget that
several workers on one storage share."""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from lightning_llm.errors import UserError
from lightning_llm.sweep.space import PRUNERS, SAMPLERS, SweepSpec

log = logging.getLogger("lightning_llm")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

WORKER_ATTRS = ("worker", "worker_process")  # the user attrs that name the process running a trial


class Requeue(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback: a failed trial's parameters queued again as a WAITING trial. The copy
    names no worker until one runs it, so a live worker that has just taken it is never taken for
    the dead one."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)  # Optuna's callback appends to the trial's retry_history in place
        trial.user_attrs = {key: value for key, value in trial.user_attrs.items() if key not in WORKER_ATTRS}
        super().__call__(study, trial)


RETRY = Requeue()  # requeues a trial, same parameters, as a WAITING trial


def process_key(pid: int) -> str | None:
    """Which process `pid` is, from Linux's /proc: '<boot id> <pid namespace> <start time>', so that a
    reused pid, another boot or another container with the same host name never passes for it.
    None where no such process runs (a killed one not yet reaped included), or there is no /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 of proc_pid_stat(5)
    except OSError:
        return None
    state, started = fields[0], fields[19]  # fields 3 and 22: the state, the start in clock ticks after boot
    return None if state in ("Z", "X") else f"{boot} {namespace} {started}"


def record_worker(trial: optuna.Trial) -> None:
    """Name the process that runs `trial` (worker = "<host>:<pid>", worker_process = its process_key),
    so that a later sweep on this machine can tell that it died."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("worker_process", process_key(os.getpid()))


def worker_alive(trial: FrozenTrial) -> bool | None:
    """Whether the process that runs `trial` still runs, where this machine can tell: its worker is on
    this host, and (on Linux) in this boot and pid namespace. None elsewhere (another host, or no
    worker recorded yet): that trial is left to the heartbeat's grace period."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == 0:
        return None
    recorded, mine = trial.user_attrs.get("worker_process"), process_key(os.getpid())
    if recorded is not None and mine is not None:
        if recorded.split()[:2] != mine.split()[:2]:
            return None  # the same host name, but another boot or another container
        return process_key(int(pid)) == recorded
    if recorded is not None or mine is not None:
        return None  # recorded where /proc was and read where it is not (or the reverse): not comparable
    try:  # no /proc on either side: the pid alone (a reused pid reads as alive: the heartbeat then decides)
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def reclaim_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker process on this machine is gone (killed, crashed), with the
    reason in `fail_reason`, and queue their parameters again; returns their numbers. Without this a
    sweep run again within the heartbeat's grace period counts the dead trial as running."""
    storage = study._storage  # as optuna.storages.fail_stale_trials: a trial is failed by its id
    reclaimed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial) is not False:
            continue
        worker = trial.user_attrs["worker"]
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                        f"worker {worker} died: its process is gone from this machine; "
                                        "its parameters are queued again")
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker reclaimed it first
        RETRY(study, storage.get_trial(trial._trial_id))
        log.warning("trial %d: its worker %s is no longer running: marked FAIL, its parameters queued again",
                    trial.number, worker)
        reclaimed.append(trial.number)
    return reclaimed


def default_storage(study_dir: Path) -> str:
    """sqlite:///<study dir>/study.db, the folder made if missing."""
    study_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages and the report."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return url


def with_installed_driver(url: str) -> str:
    """postgresql:// means psycopg (3) to SQLAlchemy 2.1; where only psycopg2 is installed, use it."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def open_storage(url: str, spec: SweepSpec) -> RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) with heartbeats: a trial whose worker dies is
    marked FAIL after the grace period and queued again with the same parameters."""
    try:
        url = with_installed_driver(url)
        backend = make_url(url).get_backend_name()
        # SQLite: wait for another worker's write rather than fail; PostgreSQL: give up on a dead host.
        connect_args = {"sqlite": {"timeout": 60}, "postgresql": {"connect_timeout": 10}}.get(backend, {})
        for attempt in range(3):
            try:
                return RDBStorage(url, engine_kwargs={"connect_args": connect_args},
                                  heartbeat_interval=spec.heartbeat.interval, grace_period=spec.heartbeat.grace_period,
                                  heartbeat_stale_trial_callback=RETRY)
            except SQLAlchemyError:
                # Workers started together race to create the tables of a new storage: retry once they exist.
                if attempt == 2:
                    raise
                time.sleep(1 + attempt)
    except (SQLAlchemyError, ImportError, ValueError) as err:
        reason = " ".join(str(err).split("\n(Background")[0].split())[:300]
        raise UserError(f"cannot open the study storage {shown_url(url)}: {reason}") from None


def build_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    config = spec.sampler
    if config.name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise UserError("sampler cmaes needs the `cmaes` package: pip install cmaes")
    extra = {"search_space": spec.grid()} if config.name == "grid" else {}
    try:
        return SAMPLERS[config.name](seed=config.seed, **extra, **config.options)
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler {config.name}: {err}") from None


def build_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    config = spec.pruner
    try:
        return PRUNERS[config.name](**config.options)
    except (TypeError, ValueError) as err:
        raise UserError(f"pruner {config.name}: {err}") from None


def definition(spec: SweepSpec, train_overrides: list[str]) -> dict:
    """What a trial of this study means; a study resumed with another meaning is refused."""
    return {"train_overrides": train_overrides,
            "search_space": {name: vars(d) for name, d in spec.search_space.items()},
            "objective": vars(spec.objective)}


def meaning(definition: dict) -> dict:
    """The definition less the overrides that move files or logs (paths.*, logger), not results."""
    kept = [o for o in definition["train_overrides"] if not o.lstrip("+~").startswith(("paths", "logger"))]
    return {**definition, "train_overrides": kept}


def open_study(spec: SweepSpec, storage: RDBStorage, train_overrides: list[str]) -> optuna.Study:
    """Create the study, or load it to continue (the same command run again, or another worker)."""
    sampler, pruner = build_sampler(spec), build_pruner(spec)
    try:
        study = optuna.create_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=spec.objective.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner)
        # The seed made the first worker's draws: a continued study or a second worker must not repeat them.
        sampler.reseed_rng()
    wanted = definition(spec, train_overrides)
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", wanted)
    elif meaning(stored) != meaning(wanted):
        differs = ", ".join(key for key in wanted if meaning(stored)[key] != meaning(wanted)[key])
        raise UserError(f"study {spec.study_name!r} in this storage was run with another {differs}: "
                        "give another study_name=, or the same sweep and overrides to continue it")
    return study


def spent_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward n_trials: finished ones (a trial that failed on its own is
    finished: its parameters fail), and those running or queued. A trial interrupted by Ctrl-C or
    a dead worker (reclaimed, or silent past the heartbeat's grace period) does not count, since its
    requeued copy does; nor does a surplus one (see below)."""
    trials = study.get_trials(deepcopy=False)
    requeued = {number for t in trials for number in RETRY.retry_history(t)}
    return [t for t in trials
            if not (t.state == TrialState.FAIL and (t.number in requeued or t.user_attrs.get("surplus")))]


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Two workers that finish at the same moment may both start one more trial when one was left:
    the trial asked later finds n_trials spent ahead of it and stands down without running."""
    ahead = [t for t in spent_trials(study) if t.number < trial.number]
    return len(ahead) >= n_trials


def budget_spent(study: optuna.Study, n_trials: int) -> bool:
    """True once the study holds n_trials trials that count and none is queued (a queued trial is the
    copy of an interrupted one: someone must still run it). A dead worker's trial is failed first:
    at once where its process was on this machine, after the heartbeat's grace period elsewhere."""
    reclaim_dead_trials(study)
    optuna.storages.fail_stale_trials(study)
    trials = spent_trials(study)
    return len(trials) >= n_trials and not any(t.state == TrialState.WAITING for t in trials)


def run_study(study: optuna.Study, objective, spec: SweepSpec) -> None:
    """Run trials until the study, counting every worker's trials, holds spec.n_trials."""
    spent = budget_spent(study, spec.n_trials)  # a dead worker's trial on this machine is reclaimed first
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial) is None:
            log.info("trial %d (worker %s) runs on another machine or cannot be checked from here: it counts as "
                     "running until its heartbeat has been silent for grace_period=%d s", trial.number,
                     trial.user_attrs.get("worker", "not yet recorded"), spec.heartbeat.grace_period)
    if spent:
        log.info("study %s already holds n_trials=%d trials: nothing to run (raise n_trials= to run more)",
                 spec.study_name, spec.n_trials)
        return
    finished = [t for t in spent_trials(study) if t.state.is_finished()]
    log.info("study %s: %d of n_trials=%d trials finished", spec.study_name, len(finished), spec.n_trials)

    def stop_when_spent(study: optuna.Study, trial: FrozenTrial) -> None:
        if budget_spent(study, spec.n_trials):
            study.stop()

    # n_trials here bounds this worker alone (and sizes the progress bar); the callback stops it
    # as soon as the study, with the other workers' trials, is complete.
    study.optimize(objective, n_trials=spec.n_trials - len(finished), timeout=spec.timeout, catch=(Exception,),
                   callbacks=[stop_when_spent], gc_after_trial=True, show_progress_bar=True)
