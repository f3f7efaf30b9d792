"""Language-model metrics on a token stream: loss, perplexity, token accuracy, bits per byte.

Both the transformer and the n-gram baseline score the same targets (every token of the
stream after the first), so their numbers sit side by side. Bits per byte is the total
loss in bits over the UTF-8 bytes of the scored text: it does not depend on the
tokenizer, so a char model and a BPE model compare on it. Perplexity and bits per byte carry
95% bootstrap intervals over windows of the context length (`window_intervals`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lightning_llm.model import GPT


def utf8_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """Bytes of the text `ids` spell; special tokens (document separators, unknowns) spell none."""
    return len(tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True).encode("utf-8"))


def lm_metrics(nats: np.ndarray, n_bytes: int, correct: np.ndarray | None = None) -> dict:
    """nats: -ln p of each scored target; n_bytes: the UTF-8 bytes of those targets' text."""
    loss = float(np.mean(nats))
    metrics = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": float(np.sum(nats)) / math.log(2) / n_bytes,
               "tokens": int(len(nats)), "bytes": int(n_bytes)}
    if correct is not None:
        metrics["acc"] = float(np.mean(correct))
    return metrics


def window_starts(n_targets: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `window` targets every `stride` (the last one flush with the end), and the
    offset in each from which its targets are new: each target is scored exactly once."""
    starts = np.arange(0, n_targets - window + 1, stride)
    if starts[-1] + window < n_targets:
        starts = np.append(starts, n_targets - window)
    already_scored = np.concatenate(([0], starts[:-1] + window))
    return starts, np.maximum(already_scored - starts, 0)


@torch.no_grad()
def score_tokens(model: GPT, tokens: np.ndarray, stride: int | None = None, batch_size: int = 32,
                 device: str = "cpu", desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """-ln p and argmax hit of every target tokens[1:], each predicted from the tokens before it
    in its window of block_size. With stride < block_size the windows overlap and every target
    after the first window sees at least block_size - stride tokens of context; the default
    (stride = block_size) is the non-overlapping windows of training's validation."""
    model.eval()
    n_targets = len(tokens) - 1
    window = min(model.config.block_size, n_targets)
    stride = min(stride or window, window)
    starts, first_new = window_starts(n_targets, window, stride)
    offsets = np.arange(window + 1)
    nats = np.empty(n_targets, dtype=np.float64)
    correct = np.empty(n_targets, dtype=bool)
    for i in tqdm(range(0, len(starts), batch_size), desc=desc, leave=False):
        batch_starts = starts[i:i + batch_size]
        rows = torch.from_numpy(np.asarray(tokens[batch_starts[:, None] + offsets], dtype=np.int64)).to(device)
        logits = model.lm_head(model.features(rows[:, :-1]))  # every position; the loss is taken per target below
        targets = rows[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        loss = loss.view_as(targets).cpu().numpy()
        hits = (logits.argmax(dim=-1) == targets).cpu().numpy()
        for row, (start, skip) in enumerate(zip(batch_starts, first_new[i:i + batch_size])):
            nats[start + skip:start + window] = loss[row, skip:]
            correct[start + skip:start + window] = hits[row, skip:]
    return nats, correct


def block_bytes(tokenizer: Tokenizer, ids: np.ndarray, block: int) -> np.ndarray:
    """UTF-8 bytes of each run of `block` consecutive tokens of `ids` (the last run may be shorter)."""
    ids = np.asarray(ids)
    rows = [ids[i:i + block].tolist() for i in range(0, len(ids), block)]
    return np.array([len(text.encode("utf-8")) for text in tokenizer.decode_batch(rows, skip_special_tokens=True)],
                    dtype=np.float64)


def window_intervals(nats: np.ndarray, bytes_per_block: np.ndarray, n_bytes: int, block: int, *,
                     n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals of bpb and perplexity over windows of `block` consecutive targets.

    A window is the unit resampled (neighbouring tokens are not independent; windows of a context
    length nearly are): each resample draws as many windows as there are, with replacement, and
    takes their total loss over their total bytes (bpb) or tokens (perplexity), the same ratio
    the point estimate takes over all windows. Decoding a window alone can split a multi-byte
    character at its edges, so the windows' bytes are rescaled to sum to the split's exact bytes.
    Fewer than two windows give no interval (None)."""
    nats = np.asarray(nats, dtype=np.float64)
    starts = np.arange(0, len(nats), block)
    if len(starts) < 2 or len(bytes_per_block) != len(starts):
        return {"bpb_ci": None, "ppl_ci": None, "windows": int(len(starts))}
    nats_per_block = np.add.reduceat(nats, starts)
    tokens_per_block = np.diff(np.append(starts, len(nats))).astype(np.float64)
    weights = np.asarray(bytes_per_block, dtype=np.float64)
    weights = weights * (n_bytes / weights.sum()) if weights.sum() > 0 else weights
    rng = np.random.default_rng(seed)
    bpb, loss = [], []
    for chunk in np.array_split(np.arange(n_resamples), max(1, n_resamples * len(starts) // 5_000_000)):
        counts = rng.multinomial(len(starts), np.full(len(starts), 1 / len(starts)), size=len(chunk))
        total = counts @ nats_per_block
        bpb.append(total / np.maximum(counts @ weights, 1e-12) / math.log(2))
        loss.append(total / (counts @ tokens_per_block))
    tail = (1 - level) / 2 * 100
    lo_bpb, hi_bpb = np.percentile(np.concatenate(bpb), [tail, 100 - tail])
    lo_loss, hi_loss = np.percentile(np.concatenate(loss), [tail, 100 - tail])
    return {"bpb_ci": [float(lo_bpb), float(hi_bpb)],
            "ppl_ci": [math.exp(min(lo_loss, 700.0)), math.exp(min(hi_loss, 700.0))],
            "windows": int(len(starts)), "level": level, "resamples": n_resamples}
