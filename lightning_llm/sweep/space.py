"""A sweep file, sweeps/<name>.yaml: the base training overrides, the search space, the sampler,
the pruner, the objective and the budget. Everything in it is checked before any trial runs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import SWEEPS_DIR, to_dataclass
from lightning_llm.errors import UserError

SAMPLERS = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
            "tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler,
            "qmc": optuna.samplers.QMCSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
# The sweep-file keys that the command line may set too (conf/sweep.yaml holds them as null = "the file's").
COMMAND_LINE_KEYS = ("n_trials", "timeout", "study_name", "storage")


@dataclass
class Dimension:
    """One searched training key: a float or int range (log-scaled or stepped), or a list of choices."""

    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def check(self, name: str) -> None:
        where = f"search_space.{name}"
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"{where}: a categorical entry needs a non-empty list of choices")
        elif self.type in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"{where}: a {self.type} entry needs low <= high, got low={self.low} high={self.high}")
            if self.log and (self.low <= 0 or self.step is not None):
                raise ValueError(f"{where}: log scale needs low > 0 and no step")
        else:
            raise ValueError(f"{where}: type must be float, int or categorical, got {self.type!r}")

    def candidates(self) -> list[Any]:
        """The values that must all be valid training overrides: the choices, or both ends of the range."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class SamplerConfig:
    name: str = "tpe"  # grid | random | tpe | cmaes | qmc
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # more arguments of the Optuna sampler class


@dataclass
class PrunerConfig:
    name: str = "median"  # median | hyperband | threshold (options: upper, lower) | none
    options: dict[str, Any] = field(default_factory=dict)  # arguments of the Optuna pruner class


@dataclass
class ObjectiveConfig:
    metric: str = "best_val/loss"  # a key of the metrics `llm train` returns
    direction: str = "minimize"
    monitor: str = "val/loss"  # what the pruner sees at each validation, reported by optimizer step


@dataclass
class HeartbeatConfig:
    """A running trial records a heartbeat every `interval` seconds; one silent for `grace_period`
    seconds (its worker was killed) is marked FAIL and queued again with the same parameters."""

    interval: int = 10
    grace_period: int = 30


@dataclass
class SweepSpec:
    """The checked form of a sweep file."""

    study_name: str
    search_space: dict[str, Dimension]
    overrides: list[str] = field(default_factory=list)  # the base run: `llm train <overrides>`
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    n_trials: int | None = None  # for a grid, null means every point of the grid
    timeout: float | None = None  # seconds for this worker; the study stops taking new trials after it
    storage: str | None = None  # null: sqlite:///<output_root>/sweeps/<study_name>/study.db
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.study_name):
            raise ValueError(f"study_name {self.study_name!r} must be letters, digits, '_', '.' or '-' "
                             "(it names a folder)")
        if not self.search_space:
            raise ValueError("search_space is empty: name at least one training key to search")
        for name, dimension in self.search_space.items():
            dimension.check(name)
        if self.sampler.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler.name!r}: choose one of {', '.join(SAMPLERS)}")
        if self.pruner.name not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner.name!r}: choose one of {', '.join(PRUNERS)}")
        if self.objective.direction not in ("minimize", "maximize"):
            raise ValueError(f"objective.direction must be minimize or maximize, got {self.objective.direction!r}")
        if self.sampler.name == "grid":
            self._check_grid()
        if self.n_trials is None or self.n_trials < 1:
            raise ValueError(f"n_trials must be a whole number of at least 1, got {self.n_trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or null, got {self.timeout}")
        if self.heartbeat.interval < 1 or self.heartbeat.grace_period <= self.heartbeat.interval:
            raise ValueError("heartbeat: interval must be at least 1 s and grace_period longer than interval")

    def _check_grid(self) -> None:
        """A grid lists its values: every entry needs choices, and it runs each point at most once."""
        for name, dimension in self.search_space.items():
            if dimension.type != "categorical":
                raise ValueError(f"the grid sampler needs choices for every entry: search_space.{name} is a "
                                 f"{dimension.type} range; list its values as a categorical entry")
        points = self.grid_size()
        self.n_trials = points if self.n_trials is None else self.n_trials
        if self.n_trials > points:
            raise ValueError(f"n_trials={self.n_trials} is more than the {points} points of the grid: "
                             "a grid runs each point once")

    def grid_size(self) -> int:
        return math.prod(len(d.choices) for d in self.search_space.values())

    def grid(self) -> dict[str, list[Any]]:
        return {name: list(d.choices) for name, d in self.search_space.items()}


def sweep_path(name: str) -> Path:
    """sweep=<name> is sweeps/<name>.yaml; a value ending in .yaml is a path to any sweep file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise UserError(f"sweep={name}: no file {path}; the shipped sweeps are {', '.join(known)}, "
                        "or give a path to a .yaml file")
    return path


def load_sweep(cfg: DictConfig) -> SweepSpec:
    """The sweep file named by cfg.sweep, with the command line's non-null n_trials, timeout,
    study_name and storage in place of the file's. The study name defaults to the file's name."""
    path = sweep_path(str(cfg.sweep))
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise UserError(f"sweep file {path} must be a mapping of keys (overrides, search_space, sampler, ...)")
    node.setdefault("study_name", path.stem)
    for key in COMMAND_LINE_KEYS:
        if cfg[key] is not None:
            node[key] = cfg[key]
    return to_dataclass(SweepSpec, node, f"sweep {path}")
