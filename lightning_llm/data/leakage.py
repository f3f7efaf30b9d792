"""The leakage check: what share of the held-out splits' word n-grams also occur in train.

A 13-gram of words rarely repeats by chance, so a high share means held-out text was
trained on (another edition, a quoted passage, a duplicate). Hashes of every document's
n-grams are kept in memory, sampled by hash value so their number stays under a cap: an
n-gram is kept when the low `level` bits of its hash are zero, the same decision in
every document, so the shares measured on the sample estimate the shares on all text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LeakageConfig:
    enabled: bool = True
    ngram: int = 13  # words per n-gram (lowercased runs of letters and digits)
    max_hashes: int = 1 << 24  # memory cap (8 bytes each); past it n-grams are sampled by hash
    compare_ungrouped: bool = True  # also measure the split a document-by-document assignment would give

    def __post_init__(self):
        if self.ngram < 1 or self.max_hashes < 1:
            raise ValueError("data.leakage.ngram and data.leakage.max_hashes must be at least 1")


class NgramSample:
    """Each document's sampled n-gram hashes, in the order documents were added."""

    def __init__(self, max_hashes: int):
        self.max_hashes, self.level, self.total = max_hashes, 0, 0
        self.per_doc: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> None:
        hashes = self._sampled(hashes)
        self.per_doc.append(hashes)
        self.total += len(hashes)
        while self.total > self.max_hashes:
            self.level += 1
            self.per_doc = [self._sampled(h) for h in self.per_doc]
            self.total = sum(len(h) for h in self.per_doc)

    def keep(self, indices: list[int]) -> None:
        self.per_doc = [self.per_doc[i] for i in indices]
        self.total = sum(len(h) for h in self.per_doc)

    def _sampled(self, hashes: np.ndarray) -> np.ndarray:
        return hashes[(hashes & np.uint64((1 << self.level) - 1)) == 0] if self.level else hashes

    @property
    def rate(self) -> float:
        return 1 / (1 << self.level)

    def leakage(self, split_of: list[str], ids: list[str], worst: int = 5) -> dict:
        """Per held-out split: n-grams, how many occur in train, the share; and the documents that
        leak most."""
        split_of = np.array(split_of)
        lengths = np.array([len(h) for h in self.per_doc])
        seen = np.sort(self._joined(np.flatnonzero(split_of == "train")))
        out = {}
        for split in ("val", "test"):
            members = np.flatnonzero((split_of == split) & (lengths > 0))
            found = contains(seen, self._joined(members))
            per_doc = np.add.reduceat(found, np.cumsum(lengths[members]) - lengths[members]) if len(members) else found
            shares = per_doc / np.maximum(lengths[members], 1)
            order = sorted(range(len(members)), key=lambda k: (-shares[k], ids[members[k]]))[:worst]
            out[split] = {"ngrams": int(lengths[members].sum()), "in_train": int(found.sum()),
                          "share": round(float(found.mean()) if len(found) else 0.0, 6),
                          "worst": [{"id": ids[members[k]], "share": round(float(shares[k]), 4)} for k in order]}
        return out

    def _joined(self, indices: np.ndarray) -> np.ndarray:
        return np.concatenate([self.per_doc[i] for i in indices]) if len(indices) else np.empty(0, dtype=np.uint64)


def contains(sorted_array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which values occur in a sorted array: a binary search each, in sorted order (ten times
    faster on large arrays: neighbouring searches touch the same memory)."""
    if not len(sorted_array) or not len(values):
        return np.zeros(len(values), dtype=bool)
    order = np.argsort(values)
    at = np.minimum(np.searchsorted(sorted_array, values[order]), len(sorted_array) - 1)
    found = np.empty(len(values), dtype=bool)
    found[order] = sorted_array[at] == values[order]
    return found
