"""Forgetting on purpose (`finetune.forget=<data>`, `update.remove=<data>`): the model is pushed away
from a text while it keeps training on other text, so the forget text's loss rises and the rest holds.

Each training step's loss is `retain NLL + weight * forget term`: the ordinary next-token loss on a
batch of the retain data (data=, with update's replay mixed in) plus a term on a batch of windows of
the text to forget. The forget term is one of two standard objectives, both bounded so that it
cannot run away:

- unlikelihood (the default): mean of -log(1 - p(token)) over the forget text's target tokens
  (Welleck et al. 2019, "Neural text generation with unlikelihood training"). It is at least 0, and
  its gradient fades as p(token) -> 0: it stops pushing once the text is unlikely, instead of
  trading the rest of the model for ever higher loss. Its gradient with respect to the logits is
  at most p(token) in size, largest for the tokens the model is surest of; its value is unbounded
  as p -> 1, so each token's value is capped at 13.8 nats (-log(1e-6)) with the gradient kept
  (a token the model is sure of still gets the full push).
- ascent: gradient ascent on the forget text's NLL (Jang et al. 2022, "Knowledge unlearning"), each
  token's NLL capped at `cap` nats: the term is -min(NLL, cap), in [-cap, 0], and a token past the
  cap gives no gradient. Plain ascent is unbounded below (NLL -> inf) and wrecks the model.

The pieces here are plain torch, except the two Lightning classes at the bottom (the datamodule
that pairs each retain batch with a forget batch, and the LightningModule whose step adds the term).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from lightning_llm.data import PreparedData
from lightning_llm.errors import UserError
from lightning_llm.finetune.config import FORGET_METHODS as METHODS
from lightning_llm.finetune.instruction import IGNORE  # GPT's ignore_index: targets that carry no loss
from lightning_llm.model.io import tokenizer_hash
from lightning_llm.training.datamodule import RandomWindows
from lightning_llm.training.module import LanguageModel

UNLIKELIHOOD_CAP = -math.log(1e-6)  # unlikelihood: a token's value is at most 13.8 nats (its gradient is kept)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (float32) and the mask of targets that carry loss (not IGNORE)."""
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE,
                          reduction="none")
    return nll, targets.reshape(-1) != IGNORE


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def unlikelihood_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log(1 - p(target)) over the targets (not IGNORE), each token's in [0, UNLIKELIHOOD_CAP].

    Exact at any p: with rest = logsumexp of the other logits, -log(1 - p) = softplus(logit - rest).
    Past the cap the value is the cap but the gradient stays the exact one (p for the target's logit),
    so the tokens the model is surest of, where the push matters most, are not left out."""
    logits = logits.float()
    index = targets.clamp(min=0).unsqueeze(-1)  # IGNORE rows pick any logit: they carry no weight
    target = logits.gather(-1, index).squeeze(-1)
    rest = logits.scatter(-1, index, float("-inf")).logsumexp(-1)
    term = F.softplus(target - rest)
    capped = torch.where(term > UNLIKELIHOOD_CAP, term - term.detach() + UNLIKELIHOOD_CAP, term)
    return masked_mean(capped.reshape(-1), targets.reshape(-1) != IGNORE)


def ascent_loss(logits: torch.Tensor, targets: torch.Tensor, *, cap: float) -> torch.Tensor:
    """Mean -min(NLL, cap) over the targets: gradient ascent on the NLL, in [-cap, 0]."""
    nll, mask = token_nll(logits, targets)
    return masked_mean(-nll.clamp(max=cap), mask)


def forget_term(logits: torch.Tensor, targets: torch.Tensor, *, method: str, cap: float) -> torch.Tensor:
    """The forget text's term of the loss (lower is more forgotten)."""
    if method == "unlikelihood":
        return unlikelihood_loss(logits, targets)
    if method == "ascent":
        return ascent_loss(logits, targets, cap=cap)
    raise ValueError(f"forget method must be one of {', '.join(METHODS)}, got {method!r}")


def forget_step(model: torch.nn.Module, retain: tuple[torch.Tensor, torch.Tensor],
                forget: tuple[torch.Tensor, torch.Tensor], *, method: str, weight: float,
                cap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to minimise, retain NLL, forget term) of one step: retain NLL + weight * forget term."""
    _, retain_loss = model(*retain)
    logits, _ = model(forget[0], every_position=True)
    term = forget_term(logits, forget[1], method=method, cap=cap)
    return retain_loss + weight * term, retain_loss, term


def prepared_with(path: str | Path, *, tokenizer_json: str, key: str, owner: str) -> PreparedData:
    """The prepared-data folder at `path`, checked to be one (meta.json) and tokenized with
    `tokenizer_json` (a loss under another tokenizer means nothing); else one UserError naming `key`."""
    folder = Path(path)
    if not (folder / "meta.json").is_file():
        raise UserError(f"{key}: {folder} is not a prepared-data folder (no meta.json in it)")
    data = PreparedData(folder)
    if tokenizer_hash(data.tokenizer_path.read_text()) != tokenizer_hash(tokenizer_json):
        raise UserError(f"{key}: {folder} was tokenized with another tokenizer than {owner}'s: "
                        "its loss would mean nothing")
    return data


class PairedWindows(IterableDataset):
    """Each batch of `retain` (an iterable of (x, y) batches) with a batch of random windows of the
    forget tokens, drawn as RandomWindows draws them (seeded by batch index, so a resume repeats)."""

    def __init__(self, retain, forget: RandomWindows):
        self.retain, self.forget = retain, forget

    def __iter__(self):
        for (x, y), (fx, fy) in zip(self.retain, self.forget):
            yield x, y, fx, fy


class ForgetDataModule(pl.LightningDataModule):
    """A text datamodule (its validation unchanged) whose training batches also carry forget windows."""

    def __init__(self, retain: pl.LightningDataModule, forget: np.ndarray, *, block_size: int, batch_size: int,
                 seed: int):
        super().__init__()
        self.retain, self.forget = retain, forget
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed

    def train_dataloader(self):
        self.retain.trainer = self.trainer
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        rank = self.trainer.global_rank if self.trainer else 0
        # another seed than the retain stream's, so the two draw unrelated positions
        forget = RandomWindows(self.forget, self.block_size, self.batch_size, self.seed + 1, rank, start)
        return DataLoader(PairedWindows(self.retain.train_dataloader(), forget), batch_size=None)

    def val_dataloader(self):
        self.retain.trainer = self.trainer
        return self.retain.val_dataloader()


class ForgetModel(LanguageModel):
    """LanguageModel whose training step minimises retain NLL + weight * the forget term; it logs
    train/loss (the retain NLL, as a plain fine-tune logs it) and train/forget (the term)."""

    non_finite_hint = "lower optim.optimizer.lr or finetune.forget_weight"

    def __init__(self, *args, method: str, weight: float, cap: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.forget_method, self.forget_weight, self.forget_cap = method, weight, cap

    def training_step(self, batch, batch_idx):
        x, y, fx, fy = batch
        loss, retain, term = forget_step(self.model, (x, y), (fx, fy), method=self.forget_method,
                                         weight=self.forget_weight, cap=self.forget_cap)
        self.guard_finite(loss)
        self.log_dict({"train/loss": retain, "train/forget": term}, prog_bar=True)
        return loss
