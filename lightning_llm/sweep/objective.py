"""One trial is exactly `llm train <base overrides> <trial overrides>`: the trial's parameters
become Hydra overrides, Hydra's compose API builds the config, and `train` fits it."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from hydra import compose
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from lightning_llm.sweep.space import SweepSpec
from lightning_llm.sweep.study import RETRY, is_surplus, record_worker


def override(key: str, value: Any) -> str:
    """A Hydra override that sets key to value, as it would be typed after `llm train`."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, str) and not re.fullmatch(r"[\w./-]+", value):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"{key}={text}"


def command(overrides: list[str]) -> str:
    return shlex.join(["llm", "train", *overrides])


class PruneByStep(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, reporting at the optimizer step instead of the epoch:
    training here is one endless epoch, so every validation would otherwise land on step 0."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        step = trainer.global_step
        self._trial.report(trainer.callback_metrics[self.monitor].item(), step=step)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} at step {step} is worse than the pruner allows")


class Objective:
    """Called by study.optimize once per trial; returns the objective metric of the run.

    An exception from the run fails the trial with its reason in the trial's `fail_reason`
    attribute, and the study goes on. Ctrl-C marks the trial FAIL, queues its parameters again
    for the next run of the same command, and ends the sweep."""

    def __init__(self, spec: SweepSpec, train_overrides: list[str], study_dir: Path, *, wandb: bool,
                 train: Callable[..., dict] | None = None):
        """train(cfg, extra_callbacks=...) fits one run and returns its metrics: the stage passes
        `llm train`'s function in, so this package never imports a stage."""
        self.spec, self.train_overrides, self.study_dir, self.wandb = spec, train_overrides, study_dir, wandb
        self.train = train

    def trial_overrides(self, trial: optuna.Trial) -> list[str]:
        params = {name: dimension.suggest(trial, name) for name, dimension in self.spec.search_space.items()}
        overrides = [override(name, value) for name, value in params.items()]
        if self.wandb:  # one W&B run per trial, grouped by study; train logs its config, parameters included
            overrides += [override("logger.wandb.group", self.spec.study_name),
                          override("logger.wandb.name", f"{self.spec.study_name}-trial-{trial.number}")]
        return overrides

    def __call__(self, trial: optuna.Trial) -> float:
        study = trial.study
        if is_surplus(study, trial, self.spec.n_trials):
            trial.set_user_attr("surplus", True)
            study.stop()
            raise RuntimeError("not run: the study already held n_trials trials when this worker asked")
        run_dir = self.study_dir / "trials" / str(trial.number)
        overrides = self.train_overrides + self.trial_overrides(trial)
        # A requeued copy inherits its original's attributes: each is set afresh.
        trial.set_user_attr("fail_reason", None)
        trial.set_user_attr("run_dir", str(run_dir))
        record_worker(trial)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("command", command(overrides + [override("hydra.run.dir", str(run_dir))]))
        try:
            # One progress bar for the sweep (Optuna's, over trials): a trial's own bar would overwrite it.
            quiet = ["~callbacks.progress_bar", "++trainer.enable_progress_bar=false"]
            cfg = compose(config_name="train", overrides=overrides + quiet + [override("paths.run_dir", str(run_dir))])
            metrics = self.train(cfg, extra_callbacks=(PruneByStep(trial, self.spec.objective.monitor),))
            value = metrics.get(self.spec.objective.metric)
            if value is None:
                raise RuntimeError(f"objective.metric {self.spec.objective.metric!r} is not among the run's "
                                   f"metrics {sorted(metrics)}")
            if not math.isfinite(value):
                raise RuntimeError(f"non-finite loss: {self.spec.objective.metric} is {value}")
            return value
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {' '.join(str(err).split())}"[:500])
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during fit into SystemExit
            trial.set_user_attr("fail_reason", "interrupted: its parameters are queued for the next run")
            frozen = study.tell(trial, state=TrialState.FAIL)
            RETRY(study, frozen)
            raise SystemExit(130) from None  # recorded here: optuna must not record it a second time
