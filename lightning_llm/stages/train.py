"""llm train: prepare data (cached), build the model and trainer from config, fit, record the run."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lightning_llm.artifacts import write_json, write_text
from lightning_llm.errors import UserError
from lightning_llm.model import GPT, GPTConfig, flops_per_token
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.config import to_dataclass
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.prepare import prepared_data
from lightning_llm.training.datamodule import TokenDataModule
from lightning_llm.training.module import LanguageModel


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` picks bf16-mixed where the chip does bf16 matmuls fast (CUDA with bf16, or a CPU
    with AVX-512 BF16 / AMX), and 32-true elsewhere: on an AVX2-only CPU bf16 is emulated and
    far slower than fp32."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if _cpu_has_bf16() else "32-true"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """resume=auto: the newest last.ckpt or periodic.ckpt among this experiment's earlier run dirs."""
    if cfg.resume in (None, False):
        return cfg.ckpt_path
    if cfg.resume != "auto":
        raise UserError(f"resume must be auto or null, got {cfg.resume!r}")
    if cfg.ckpt_path:
        raise UserError("give either resume=auto or ckpt_path=..., not both")
    experiment_dir = Path(cfg.paths.output_root) / "train" / cfg.experiment_name
    this_run = Path(cfg.paths.run_dir).resolve()
    candidates = [p for pattern in ("*/checkpoints/last.ckpt", "*/checkpoints/periodic.ckpt")
                  for p in experiment_dir.glob(pattern) if p.parents[1].resolve() != this_run]
    if not candidates:
        log.info("resume=auto: no earlier checkpoint under %s, starting fresh", experiment_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("resume=auto: resuming from %s", newest)
    return str(newest)


def continue_wandb_run(cfg: DictConfig) -> None:
    """A resumed run logs into the W&B run it continues, found beside the checkpoint's run."""
    if "wandb" not in cfg.logger or not cfg.ckpt_path:
        return
    previous = Path(cfg.ckpt_path).resolve().parents[1] / "wandb_run_id"
    if previous.is_file():
        with open_dict(cfg):
            cfg.logger.wandb.id = previous.read_text().strip()
            cfg.logger.wandb.resume = "allow"


def accumulation_for(cfg: DictConfig, block_size: int, world_size: int) -> int:
    """tokens_per_step fixes the optimizer's batch in tokens, whatever the devices: accumulate to reach it."""
    if cfg.tokens_per_step is None:
        return cfg.trainer.accumulate_grad_batches
    per_batch = cfg.batch_size * block_size * world_size
    if cfg.tokens_per_step % per_batch:
        raise UserError(f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size x block_size x "
                        f"devices = {per_batch}: choose a multiple, or set trainer.accumulate_grad_batches instead")
    accumulate = cfg.tokens_per_step // per_batch
    interval = cfg.trainer.val_check_interval
    if isinstance(interval, int) and interval % accumulate:
        raise UserError(f"tokens_per_step={cfg.tokens_per_step} means accumulating {accumulate} batches, and "
                        f"trainer.val_check_interval ({interval}) counts batches: make it a multiple of {accumulate}")
    return accumulate


def check_run_config(cfg: DictConfig) -> None:
    """Refuse impossible settings before any data is prepared."""
    to_dataclass(GPTConfig, cfg.model, "model", vocab_size=1)  # the shape; the vocabulary comes from the data
    for key in ("batch_size", "val_windows", "trainer.max_steps", "trainer.accumulate_grad_batches"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a whole number of at least 1, got {value!r}")
    interval, accumulate = cfg.trainer.val_check_interval, cfg.trainer.accumulate_grad_batches
    if isinstance(interval, int) and interval % accumulate:
        raise UserError(f"trainer.val_check_interval ({interval}) counts batches: make it a multiple of "
                        f"trainer.accumulate_grad_batches ({accumulate}) so checkpoints fall between steps")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise UserError(f"ckpt_path={cfg.ckpt_path} is not a file: pass a checkpoints/*.ckpt of an earlier run")


def train(cfg: DictConfig, extra_callbacks: tuple[pl.Callback, ...] = ()) -> dict:
    """Fit one run; extra_callbacks come from code, not config (a sweep's pruning callback)."""
    run_dir = Path(cfg.paths.run_dir)
    cfg.ckpt_path = find_resume_checkpoint(cfg)
    check_run_config(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = prepared_data(cfg)
    meta = data.meta
    model_config = to_dataclass(GPTConfig, cfg.model, "model", vocab_size=meta["vocab_size"])
    for split in ("train", "val"):
        if meta["splits"][split]["tokens"] <= model_config.block_size + 1:
            raise UserError(f"model.block_size={model_config.block_size} is larger than the {split} split "
                            f"({meta['splits'][split]['tokens']} tokens): lower model.block_size")

    module = LanguageModel(model_config.to_dict(), data.tokenizer_path.read_text(),
                           optimizer=instantiate(cfg.optim.optimizer), scheduler=instantiate(cfg.optim.scheduler),
                           bytes_per_token=meta["splits"]["val"]["bytes_per_token"])
    datamodule = TokenDataModule(data, model_config.block_size, cfg.batch_size, cfg.seed, cfg.val_windows)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + list(extra_callbacks)
    continue_wandb_run(cfg)
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
    trainer: pl.Trainer = instantiate(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    trainer.accumulate_grad_batches = accumulation_for(cfg, model_config.block_size, trainer.world_size)
    if cfg.compile:
        module.model.compile()  # in place: parameter names, so checkpoints, stay those of the plain model
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            write_text(run_dir / "wandb_run_id", logger.experiment.id)

    n_params, flops = module.model.num_params(), flops_per_token(module.model)
    if trainer.is_global_zero:
        log.info("model: %.2fM parameters, %.1f MFLOPs per token (training), precision %s",
                 n_params / 1e6, flops / 1e6, precision)
        log.info("data: %s (%s train tokens, vocabulary %d)", data.dir, f"{meta['splits']['train']['tokens']:,}",
                 meta["vocab_size"])
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    seconds = time.time() - started
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}

    # Every rank takes part: under FSDP this gathers the shards into one full copy on the CPU.
    weights = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.is_global_zero:
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        if best and checkpoint.best_model_score is not None:
            exported = load_artifact(best).model
            metrics["best_val/loss"] = round(float(checkpoint.best_model_score), 6)
        else:
            exported = GPT(model_config)
            exported.load_state_dict(weights)
        manifest = new_manifest(produced_by="train", tokenizer_json=module.tokenizer_json,
                                parent=str(cfg.ckpt_path) if cfg.ckpt_path else None, data_hash=data.dir.name,
                                run_dir=str(run_dir), checkpoint=best)
        save_artifact(exported, module.tokenizer_json, run_dir / "model", manifest=manifest)
        record = {
            "experiment": cfg.experiment_name, "run_dir": str(run_dir), "git_commit": git_commit(),
            "seed": cfg.seed, "data": {"dir": str(data.dir), "hash": data.dir.name, **meta},
            "model": {**model_config.to_dict(), "parameters": n_params, "flops_per_token": flops},
            "precision": precision, "steps": trainer.global_step, "train_seconds": round(seconds, 1),
            "tokens_seen": trainer.global_step * cfg.batch_size * model_config.block_size
                           * trainer.accumulate_grad_batches * trainer.world_size,
            "best_checkpoint": best, "metrics": metrics,
            "versions": {p: version(p) for p in ("torch", "lightning", "hydra-core", "tokenizers", "numpy")}
                        | {"python": platform.python_version()},
            "overrides": OmegaConf.to_container(cfg, resolve=True),
        }
        write_json(run_dir / "run.json", record)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()  # close the run now, so that a resume at once can reopen its id
        log.info("done in %.0f s: val/loss %s, run dir %s", seconds, metrics.get("best_val/loss"), run_dir)
    return metrics


main = stage("train")(train)
