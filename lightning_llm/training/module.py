"""The LightningModule: the GPT, its loss, its optimizer and what gets logged."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import lightning.pytorch as pl

from lightning_llm.model import GPT, GPTConfig


class LanguageModel(pl.LightningModule):
    def __init__(self, model_config: dict, tokenizer_json: str, optimizer: Callable | None = None,
                 scheduler: Callable | None = None, bytes_per_token: float = 1.0):
        """optimizer(param_groups) and scheduler(optimizer) come from config as partials.
        The tokenizer travels inside every checkpoint, so a .ckpt alone can generate."""
        super().__init__()
        self.save_hyperparameters("model_config", "bytes_per_token")
        self.tokenizer_json = tokenizer_json
        self.model = GPT(GPTConfig(**model_config))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.bytes_per_token = bytes_per_token

    def on_save_checkpoint(self, checkpoint):
        checkpoint["tokenizer_json"] = self.tokenizer_json

    def forward(self, idx, targets=None):
        return self.model(idx, targets)

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self):
        self._val_totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, token count

    def validation_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self._val_totals += torch.stack([loss.detach().double() * y.numel(),
                                         torch.tensor(float(y.numel()), dtype=torch.float64, device=self.device)])

    def on_validation_epoch_end(self):
        totals = self.all_gather(self._val_totals).reshape(-1, 2).sum(0)
        loss = (totals[0] / totals[1]).item()
        # Bits per byte divides out the tokenizer: a char model and a BPE model compare on it.
        self.log_dict({"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0)),
                       "val/bpb": loss / math.log(2) / self.bytes_per_token}, prog_bar=True)

    def configure_optimizers(self):
        # Weight decay on matrices only: not on biases, norms or (1-D) gains.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2]},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
