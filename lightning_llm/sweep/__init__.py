"""Optuna sweeps: a sweep file (sweeps/<name>.yaml) defines the search; each trial is one
`llm train` run composed by Hydra; the study lives in an RDB storage that workers share."""

from lightning_llm.sweep.objective import Objective, override
from lightning_llm.sweep.report import write_best, write_report
from lightning_llm.sweep.space import SweepSpec, load_sweep
from lightning_llm.sweep.study import default_storage, open_storage, open_study, run_study, spent_trials

__all__ = ["Objective", "SweepSpec", "default_storage", "load_sweep", "open_storage", "open_study", "override",
           "run_study", "spent_trials", "write_best", "write_report"]
