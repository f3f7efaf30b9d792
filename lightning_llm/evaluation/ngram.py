"""A Kneser-Ney n-gram language model over token ids, in vectorised numpy.

The statistical baseline of "statistical vs neural language models": interpolated
modified Kneser-Ney (Chen & Goodman, 1998), the smoothing KenLM uses. Every n-gram of
the training tokens gets an integer id by ranking (context id, next token) pairs order by
order, so counting is a few `np.unique` and `np.bincount` calls and a lookup is a
`np.searchsorted`, whatever the vocabulary and the order.

The highest order counts n-grams; lower orders count continuations (how many distinct
tokens precede an n-gram), and each order interpolates with the one below, down to a
uniform distribution over the vocabulary, so every token has a probability. Fitting holds
about 8 x order bytes per training token in memory (0.3 GB for the built-in corpus at order 5).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


def modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """D1, D2, D3+ from the counts of counts (Chen & Goodman's estimates), falling back to
    the single absolute discount Y where a count of counts is zero (tiny corpora)."""
    n = np.array([np.count_nonzero(counts == r) for r in (1, 2, 3, 4)], dtype=np.float64)
    y = n[0] / (n[0] + 2 * n[1]) if n[0] > 0 and n[1] > 0 else 0.5
    discounts = np.full(3, y)
    for r in (1, 2, 3):
        if n[r - 1] > 0 and n[r] > 0:
            estimate = r - (r + 1) * y * n[r] / n[r - 1]
            if 0 < estimate <= r:
                discounts[r - 1] = estimate
    return discounts


class KneserNey:
    """fit(tokens), then nats(tokens) per position or next_token_probs(contexts)."""

    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"n-gram order must be at least 1, got {order}")
        self.order, self.vocab_size = order, vocab_size

    def fit(self, tokens: np.ndarray) -> KneserNey:
        """Count every k-gram (k = 1..order) of `tokens` and precompute each context's
        normaliser and back-off weight."""
        V, tokens = self.vocab_size, np.asarray(tokens, dtype=np.int64)
        # ids[k][i]: the id of the k-gram ending at position i (-1 before position k-1).
        # Order 1's ids are the token ids; order k ranks (id of the (k-1)-gram before, token).
        ids, self.keys, raw_counts, first_seen = {1: tokens}, {1: np.arange(V, dtype=np.int64)}, {}, {}
        raw_counts[1] = np.bincount(tokens, minlength=V)
        for k in tqdm(range(2, self.order + 1), desc=f"{self.order}-gram counts", leave=False):
            context = np.concatenate(([-1], ids[k - 1][:-1]))
            valid = context >= 0
            keys, first, inverse, counts = np.unique(context[valid] * V + tokens[valid], return_index=True,
                                                     return_inverse=True, return_counts=True)
            ids[k] = np.full(len(tokens), -1, dtype=np.int64)
            ids[k][valid] = inverse
            self.keys[k], raw_counts[k] = keys, counts
            first_seen[k] = np.flatnonzero(valid)[first]  # a position where each k-gram ends

        # Continuation counts for the lower orders: how many distinct tokens precede each
        # k-gram, i.e. how many distinct (k+1)-grams end with it.
        self.counts = {self.order: raw_counts[self.order]}
        for k in range(1, self.order):
            suffix = ids[k][first_seen[k + 1]]
            self.counts[k] = np.bincount(suffix, minlength=len(self.keys[k]))

        self.discounts, self.denominator, self.held_back = {}, {}, {}
        for k in range(1, self.order + 1):
            counts = self.counts[k]
            self.discounts[k] = modified_kn_discounts(counts)
            n_contexts = 1 if k == 1 else len(self.keys[k - 1])
            context_of = np.zeros(len(counts), dtype=np.int64) if k == 1 else self.keys[k] // V
            # Per context: the total count, and the mass the discounts free for the order below.
            self.denominator[k] = np.bincount(context_of, weights=counts, minlength=n_contexts)
            self.held_back[k] = np.bincount(context_of, weights=self._discount(k, counts), minlength=n_contexts)
        self.n_ngrams = {k: int(np.count_nonzero(self.counts[k])) for k in self.counts}
        return self

    def _discount(self, k: int, counts: np.ndarray) -> np.ndarray:
        d1, d2, d3 = self.discounts[k]
        return np.select([counts == 0, counts == 1, counts == 2], [0.0, d1, d2], d3)

    def _probs(self, context_ids: dict[int, np.ndarray], targets: np.ndarray) -> np.ndarray:
        """P(target | context) where context_ids[k] is the id of the (k-1)-token context at
        order k (-1: never seen in training, so that order is skipped)."""
        V = self.vocab_size
        probs = np.full(len(targets), 1.0 / V)
        for k in range(1, self.order + 1):
            context = np.zeros(len(targets), dtype=np.int64) if k == 1 else context_ids[k]
            seen = context >= 0
            seen[seen] = self.denominator[k][context[seen]] > 0
            ctx, tgt = context[seen], targets[seen]
            counts = self._lookup_counts(k, ctx, tgt)
            discounted = np.maximum(counts - self._discount(k, counts), 0.0)
            probs[seen] = (discounted + self.held_back[k][ctx] * probs[seen]) / self.denominator[k][ctx]
        return probs

    def _lookup_counts(self, k: int, context: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if k == 1:
            return self.counts[1][targets].astype(np.float64)
        ids = self._find(k, context * self.vocab_size + targets)
        return np.where(ids >= 0, self.counts[k][np.maximum(ids, 0)], 0).astype(np.float64)

    def _find(self, k: int, keys: np.ndarray) -> np.ndarray:
        """The id of each k-gram key, -1 where training never saw it."""
        table = self.keys[k]
        at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where(table[at] == keys, at, -1)

    def _suffix_ids(self, tokens: np.ndarray) -> dict[int, np.ndarray]:
        """ids[k][i]: the training id of the k-gram of `tokens` ending at i (-1 if unseen)."""
        ids = {1: tokens}
        for k in range(2, self.order):
            before = np.concatenate(([-1], ids[k - 1][:-1]))
            found = np.full(len(tokens), -1, dtype=np.int64)
            known = before >= 0
            found[known] = self._find(k, before[known] * self.vocab_size + tokens[known])
            ids[k] = found
        return ids

    def nats(self, tokens: np.ndarray) -> np.ndarray:
        """-ln P(tokens[i] | up to order-1 tokens before it) for i = 1..len-1: the same
        targets the transformer scores."""
        tokens = np.asarray(tokens, dtype=np.int64)
        ids = self._suffix_ids(tokens[:-1])
        context_ids = {k: ids[k - 1] for k in range(2, self.order + 1)}
        return -np.log(self._probs(context_ids, tokens[1:]))

    def next_token_probs(self, contexts: np.ndarray) -> np.ndarray:
        """(B, V) distributions over the next token after each row of `contexts` (B, T)."""
        contexts = np.asarray(contexts, dtype=np.int64)
        B, V = len(contexts), self.vocab_size
        # Only the last order-1 tokens matter; the id of the k-gram ending at the last
        # position is the order-(k+1) context.
        tails = [self._suffix_ids(row[-(self.order - 1):]) for row in contexts] if self.order > 1 else []
        context_ids = {k: np.repeat([ids[k - 1][-1] for ids in tails], V) for k in range(2, self.order + 1)}
        return self._probs(context_ids, np.tile(np.arange(V), B)).reshape(B, V)

    def generate(self, contexts: np.ndarray, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """Sample continuations of the (B, T) contexts with temperature and top-k, as GPT.generate does."""
        rng = rng or np.random.default_rng()
        out = np.asarray(contexts, dtype=np.int64)
        for _ in range(max_new_tokens):
            probs = self.next_token_probs(out[:, -max(self.order - 1, 1):])
            out = np.concatenate((out, sample(probs, temperature, top_k, rng)[:, None]), axis=1)
        return out


def sample(probs: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """One draw from each row of (B, V) probabilities; temperature 0 is greedy."""
    if temperature == 0:
        return probs.argmax(axis=1)
    logits = np.log(np.maximum(probs, 1e-300)) / temperature
    if top_k is not None and top_k < probs.shape[1]:
        kth = np.sort(logits, axis=1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    return np.minimum((cumulative < rng.random(len(probs))[:, None]).sum(axis=1), probs.shape[1] - 1)
