"""llm sweep sweep=<name>: an Optuna study (sweeps/<name>.yaml) of `llm train` runs, then its report.

The command line holds both the sweep's own keys (sweep, n_trials, timeout, study_name, storage,
report_only) and training overrides; every trial runs
`llm train <the sweep file's overrides> <the command line's training overrides> <the trial's parameters>`.
Run the same command again to continue a study, or on several machines with one storage= URL."""

from __future__ import annotations

import fcntl
from pathlib import Path

import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from lightning_llm.config import one_line
from lightning_llm.errors import UserError
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.prepare import prepared_data
from lightning_llm.stages.train import train
from lightning_llm.sweep import (
    Objective,
    SweepSpec,
    default_storage,
    load_sweep,
    open_storage,
    open_study,
    override,
    run_study,
    write_best,
    write_report,
)
from lightning_llm.sweep.space import COMMAND_LINE_KEYS
from lightning_llm.sweep.study import shown_url

SWEEP_KEYS = ("sweep", "report_only", *COMMAND_LINE_KEYS)


def training_overrides(command_line: list[str]) -> list[str]:
    """The command line without the sweep's own keys and hydra.*: what every trial passes to `llm train`."""
    parsed = OverridesParser.create().parse_overrides(command_line)
    return [o.input_line for o in parsed
            if o.key_or_group not in SWEEP_KEYS and o.key_or_group.replace("/", ".").split(".")[0] != "hydra"]


def compose_train(overrides: list[str], where: str) -> DictConfig:
    try:
        return compose(config_name="train", overrides=overrides)
    except Exception as err:  # Hydra raises several types; each is a mistake in these overrides
        raise UserError(f"{where}: {one_line(err)}") from None


def check_search_space(spec: SweepSpec, overrides: list[str]) -> None:
    """Every searched key must be a training key, and every value it can take a valid override."""
    fixed = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
    for name, dimension in spec.search_space.items():
        if name in fixed:
            raise UserError(f"search_space.{name} is searched by this sweep: drop {name}= from the overrides")
        for value in dimension.candidates():
            compose_train(overrides + [override(name, value)], f"search_space.{name}")


def check_one_device(cfg: DictConfig) -> None:
    """A trial trains inside this process; a multi-process strategy would start the sweep again in
    every rank. More throughput comes from more workers on one storage."""
    if cfg.trainer.get("strategy", "auto") != "auto" or cfg.trainer.devices != 1:
        raise UserError(f"a sweep trains each trial on one device (trainer.devices={cfg.trainer.devices}, "
                        f"strategy={cfg.trainer.get('strategy', 'auto')}): use trainer.devices=1 and start "
                        "more workers on the same storage instead")


def prepare_once(cfg: DictConfig) -> None:
    """Prepare the base run's data before any trial, so trials find it cached; workers started
    together wait on one lock instead of preparing the same data twice."""
    cache = Path(cfg.paths.data_cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepared_data(cfg)


@stage("sweep")
def main(cfg: DictConfig) -> optuna.Study:
    spec = load_sweep(cfg)
    overrides = spec.overrides + training_overrides(list(HydraConfig.get().overrides.task))
    study_dir = Path(cfg.paths.output_root) / "sweeps" / spec.study_name
    if cfg.report_only:
        if spec.storage is None and not (study_dir / "study.db").is_file():
            raise UserError(f"no study {spec.study_name!r}: {study_dir / 'study.db'} does not exist; "
                            "run the sweep first")
        storage_url = spec.storage or default_storage(study_dir)
        try:
            study = optuna.load_study(study_name=spec.study_name, storage=open_storage(storage_url, spec))
        except KeyError:
            raise UserError(f"no study {spec.study_name!r} in {shown_url(storage_url)}: run the sweep first") from None
    else:
        base = compose_train(overrides, "the sweep's training overrides")
        check_one_device(base)
        check_search_space(spec, overrides)
        storage_url = spec.storage or default_storage(study_dir)
        study = open_study(spec, open_storage(storage_url, spec), overrides)
        prepare_once(base)
        run_study(study, Objective(spec, overrides, study_dir, wandb="wandb" in base.logger, train=train), spec)
    study_dir.mkdir(parents=True, exist_ok=True)
    log.info("report: %s", write_report(study, spec, study_dir, shown_url(storage_url)))
    best = write_best(study, study_dir)
    if best:
        log.info("best trial %d (%s): %s; train it with llm train --config-dir %s --config-name best",
                 study.best_trial.number, f"{study.best_value:.4f}", best, study_dir)
    return study
