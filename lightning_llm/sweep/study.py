"""The Optuna study behind a sweep: its storage, sampler and pruner, and the trial budget that
several workers on one storage share."""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from lightning_llm.errors import UserError
from lightning_llm.sweep.space import PRUNERS, SAMPLERS, SweepSpec

log = logging.getLogger("lightning_llm")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

RETRY = RetryHeartbeatStaleTrialCallback()  # requeues a trial, same parameters, as a WAITING trial


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
    a dead worker does not count, since its requeued copy does; nor does a surplus one (see below)."""
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
    copy of an interrupted one: someone must still run it). A dead worker's trial is failed first."""
    optuna.storages.fail_stale_trials(study)
    trials = spent_trials(study)
    return len(trials) >= n_trials and not any(t.state == TrialState.WAITING for t in trials)


def run_study(study: optuna.Study, objective, spec: SweepSpec) -> None:
    """Run trials until the study, counting every worker's trials, holds spec.n_trials."""
    if budget_spent(study, spec.n_trials):
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
