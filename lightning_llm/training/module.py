"""The LightningModule: the GPT, its loss, its optimizer and what gets logged."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch.distributed.tensor import DTensor
from torchmetrics import MeanMetric

from lightning_llm.errors import UserError
from lightning_llm.model import GPT, GPTConfig
from lightning_llm.model.io import add_checkpoint_tokenizer, checkpoint_mismatch, checkpoint_tokenizer
from lightning_llm.training.optim import param_groups
from lightning_llm.training.parallel import shard


class NonFiniteLoss(UserError):
    """A training loss was NaN or infinite: the run stops, and no weight or checkpoint holds a NaN
    it produced (module docstring of LanguageModel.training_step)."""


NAN_CHECK_EVERY = 50  # off the CPU: optimizer steps between host reads of the device-side flag


class LanguageModel(pl.LightningModule):
    def __init__(self, model_config: dict, tokenizer_json: str | None = None, *, optimizer: Callable | None = None,
                 scheduler: Callable | None = None, bytes_per_token: float = 1.0):
        """optimizer(param_groups) and scheduler(optimizer) come from config as partials.
        The tokenizer travels inside every checkpoint, so a .ckpt alone can generate; None takes
        it from the checkpoint loaded next (LanguageModel.load_from_checkpoint(path))."""
        super().__init__()
        self.save_hyperparameters("model_config", "bytes_per_token")
        self.tokenizer_json = tokenizer_json
        self.model = GPT(GPTConfig(**model_config))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.bytes_per_token = bytes_per_token
        self.val_loss = MeanMetric()
        self.first_bad_step: torch.Tensor | None = None  # device-side: -1, or the first non-finite loss's step
        self.step_finite: torch.Tensor | None = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool = True, **kwargs):
        """Lightning's loader, with the model config and tokenizer the checkpoint carries, and never
        by unpickling: weights_only=True whatever the caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""
        if not weights_only:
            raise UserError("LanguageModel.load_from_checkpoint reads checkpoints with weights_only=True only: "
                            "a checkpoint written by llm train needs nothing else")
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=True, **kwargs)

    def on_save_checkpoint(self, checkpoint):
        self.check_finite()  # before a checkpoint is written (deferred check: one sync per save)
        add_checkpoint_tokenizer(checkpoint, self.tokenizer_json)

    def on_load_checkpoint(self, checkpoint):
        """Refuse, before any weight is copied, a checkpoint of another model shape or tokenizer."""
        if self.tokenizer_json is None:  # built by load_from_checkpoint: the checkpoint's own tokenizer
            self.tokenizer_json = checkpoint_tokenizer(checkpoint)
        reason = checkpoint_mismatch(checkpoint, model_config=self.hparams.model_config,
                                     tokenizer_json=self.tokenizer_json)
        if reason:
            raise UserError(f"the checkpoint cannot be resumed: {reason}")

    def configure_model(self):
        if self.device_mesh is not None:  # set by the FSDP strategy (trainer=fsdp), None otherwise
            shard(self.model, self.device_mesh["data_parallel"])

    def forward(self, idx, targets=None):
        return self.model(idx, targets)

    deferred_nan_check: bool | None = None  # None: on any device but the CPU (tests set it to check the path)
    non_finite_hint = "lower optim.optimizer.lr, raise optim.scheduler.warmup_steps or keep trainer.gradient_clip_val"

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.guard_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def guard_finite(self, loss: torch.Tensor) -> None:
        """Stop the run on a non-finite loss. On a CPU the check is immediate and raises before the
        backward pass. On a GPU reading it would wait for the device every step, so it stays on the
        device: a non-finite step's gradients are zeroed before the optimizer sees them (no sync),
        and the flag is read every NAN_CHECK_EVERY steps, before every validation and checkpoint
        and at the end; either way no weight and no checkpoint holds a NaN the training produced."""
        deferred = loss.device.type != "cpu" if self.deferred_nan_check is None else self.deferred_nan_check
        if not deferred:
            if not torch.isfinite(loss):
                self.raise_non_finite(self.global_step, loss.item())
            return
        finite = torch.isfinite(loss.detach())  # over the micro-batches of one optimizer step
        self.step_finite = finite if self.step_finite is None else self.step_finite & finite
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        self.first_bad_step = torch.where(finite | (self.first_bad_step >= 0), self.first_bad_step, self.global_step)
        if (self.global_step + 1) % NAN_CHECK_EVERY == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Read the device-side flag (one sync) and raise if any loss so far was non-finite."""
        if self.first_bad_step is not None and (step := int(self.first_bad_step)) >= 0:
            self.raise_non_finite(step, float("nan"))

    def raise_non_finite(self, step: int, value: float):
        raise NonFiniteLoss(f"non-finite loss ({value}) at step {step}: the run stopped and its last checkpoint is "
                            f"the last good one; {self.non_finite_hint}, then resume=auto")

    def on_validation_start(self):  # validation (and the samples written after it) reads the weights
        self.check_finite()

    def on_train_end(self):
        self.check_finite()

    def on_before_optimizer_step(self, optimizer):
        if self.step_finite is not None:  # deferred check: a non-finite step updates with zero gradients
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.masked_fill_(~self.step_finite, 0.0)
            self.step_finite = None
        # Before clipping, on the steps Lightning writes (it counts them from one): the norm tells
        # whether clipping is doing the work.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            if isinstance(norm, DTensor):  # sharded under FSDP: every rank holds a part of the sum
                norm = norm.full_tensor()
            self.log("train/grad_norm", norm)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        # A token-weighted mean, synced across ranks; targets of -1 (GPT's ignore_index: padding, prompt tokens) carry no weight.
        self.val_loss.update(loss.detach(), weight=(y != -1).sum())

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute().item()
        self.val_loss.reset()
        # Bits per byte divides out the tokenizer: a char model and a BPE model compare on it.
        self.log_dict({"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0)),
                       "val/bpb": loss / math.log(2) / self.bytes_per_token}, prog_bar=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
