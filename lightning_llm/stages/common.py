"""What every stage shares: the Hydra app wrapper that turns user errors into one line."""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lightning_llm.config import CONF_DIR
from lightning_llm.errors import NothingToDo, UserError

log = logging.getLogger("lightning_llm")

# Lightning advertises a cloud logger at every start, and warns that the run dir is not
# empty (Hydra's own log file is there): neither helps a user of this harness.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Validation metrics come from a MeanMetric already synced across ranks: sync_dist would sync twice.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


def stage(name: str):
    """Make fn(cfg) a Hydra app on conf/<name>.yaml whose user errors print as one line, exit 2."""

    def wrap(fn):
        @hydra.main(config_path=CONF_DIR, config_name=name, version_base="1.3")
        @functools.wraps(fn)
        def main(cfg: DictConfig):
            try:
                return fn(cfg)
            except NothingToDo as done:
                print(f"nothing to do: {done}")
                discard_unused_run_dir()
                return None
            except UserError as err:
                message = str(err)
            except config_errors() as err:
                # A config value the target (Trainer, optimizer, logger) refused: say which, in one line.
                message = f"config: {' '.join(str(err).split())[:500]}"
            print(f"error: {message}", file=sys.stderr)
            discard_unused_run_dir()
            sys.exit(2)

        return main

    return wrap


def discard_unused_run_dir() -> None:
    """A refused run leaves no run dir behind, so outputs/ lists only runs that did something.
    Only a dir holding nothing but Hydra's own files (.hydra/, the job log) and the CSV logger's
    hparams.yaml (written before a refusal at fit start) is removed."""
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    if run_dir.resolve() == Path.cwd().resolve():  # stages whose run dir is `.` (they keep none): never the cwd
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", f"{hydra_config.job.name}.log",
                                                                   "hparams.yaml"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def config_errors() -> tuple[type[Exception], ...]:
    """The errors that mean a config value was refused. Lightning's own is among them only if a
    stage imported Lightning: a stage that does not need it (compare) starts seconds faster."""
    errors = [OmegaConfBaseException, InstantiationException]
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:
        errors.append(lightning.MisconfigurationException)
    return tuple(errors)
