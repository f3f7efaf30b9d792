"""Choosing the next token from logits: one pure function for every caller.

`sample` turns (B, V) logits into (B,) token ids: temperature 0 is greedy argmax; otherwise
the logits are divided by the temperature, cut to the top-k, then to the nucleus (top-p), and
one token is drawn per row. `logprobs` reports what the model thought of the chosen tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sample(logits: torch.Tensor, *, temperature: float, top_k: int | None = None, top_p: float = 1.0,
           generator: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """(B,) token ids drawn from (B, V) logits.

    top_k keeps the k largest logits (ties with the k-th are kept too); top_p then keeps the
    smallest set of most likely tokens whose probability reaches top_p (the most likely token
    always stays). `generator` is one generator for the whole batch, or one per row (None:
    the global RNG), so that a row's draw depends only on its own logits and generator.
    """
    if temperature < 0 or not 0 < top_p <= 1 or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = F.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))
        logits = logits.scatter(-1, order, ordered)
    probs = F.softmax(logits, dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if len(generator) != probs.size(0):
        raise ValueError(f"{len(generator)} generators for {probs.size(0)} rows")
    return torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generator)])


def logprobs(logits: torch.Tensor, ids: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the chosen ids (B,) and the top_n most likely tokens' ((B, top_n)
    log-probabilities, (B, top_n) ids), from log_softmax of the raw logits: the model's own
    distribution, before temperature, top-k and top-p (what OpenAI and vLLM report)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, ids[:, None]).squeeze(-1)
    top = torch.topk(logp, min(top_n, logp.size(-1)), dim=-1)
    return chosen, top.values, top.indices
