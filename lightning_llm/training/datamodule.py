"""Token windows from the prepared shards, as Lightning dataloaders."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_llm.data import PreparedData


class RandomWindows(IterableDataset):
    """An endless stream of batches of random windows. Batch i is drawn from a generator
    seeded by (seed, rank, i), so a resumed run that starts at batch i sees exactly the
    batches the uninterrupted run would have, and each rank sees different windows."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 start_batch: int = 0):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch

    def windows(self, rng: np.random.Generator, offsets: np.ndarray) -> np.ndarray:
        """One batch of windows of block_size + 1 tokens, drawn with `rng`."""
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return self.tokens[starts[:, None] + offsets].astype(np.int64)

    def __iter__(self):
        offsets = np.arange(self.block_size + 1)
        batch = self.start_batch
        while True:
            window = torch.from_numpy(self.windows(np.random.default_rng([self.seed, self.rank, batch]), offsets))
            yield window[:, :-1], window[:, 1:]
            batch += 1


class FixedWindows(Dataset):
    """Evenly spaced, non-overlapping windows: the same ones at every evaluation."""

    def __init__(self, tokens: np.ndarray, block_size: int, max_windows: int | None = None):
        self.tokens, self.block_size = tokens, block_size
        n = (len(tokens) - 1) // block_size
        stride = max(1, n // max_windows) if max_windows else 1
        self.starts = np.arange(0, n, stride)[:max_windows] * block_size

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        window = torch.from_numpy(self.tokens[self.starts[i]:self.starts[i] + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]


class TokenDataModule(pl.LightningDataModule):
    def __init__(self, data: PreparedData, *, block_size: int, batch_size: int, seed: int,
                 val_windows: int = 256, eval_batch_size: int | None = None):
        super().__init__()
        self.data, self.block_size, self.batch_size, self.seed = data, block_size, batch_size, seed
        self.val_windows, self.eval_batch_size = val_windows, eval_batch_size or batch_size

    def train_dataloader(self):
        # Called after a checkpoint is restored, so global_step already says where to resume.
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        rank = self.trainer.global_rank if self.trainer else 0
        stream = RandomWindows(self.data.tokens("train"), self.block_size, self.batch_size, self.seed, rank, start)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self):
        return self._fixed("val")

    def test_dataloader(self):
        return self._fixed("test")

    def _fixed(self, split: str):
        return DataLoader(FixedWindows(self.data.tokens(split), self.block_size, self.val_windows),
                          batch_size=self.eval_batch_size)
