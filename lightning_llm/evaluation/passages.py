"""Held-out passages from a prepared-data folder, read through its documents.jsonl index.

Each index line gives a document's split, metadata and token span [start, end) in that
split's shard, so a passage never straddles two documents and carries its document's labels.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_llm.errors import UserError


@dataclass(frozen=True)
class DocumentSpan:
    id: str
    split: str
    meta: dict
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def read_documents(data_dir: Path) -> list[DocumentSpan]:
    path = Path(data_dir) / "documents.jsonl"
    if not path.exists():
        raise UserError(f"{data_dir} has no documents.jsonl (prepared by an older version): "
                        "run `llm prepare` with the run's data config again")
    with open(path) as f:
        return [DocumentSpan(d["id"], d["split"], d.get("meta", {}), d["start"], d["end"]) for d in map(json.loads, f)]


def continuation_passages(documents: list[DocumentSpan], tokens: np.ndarray, split: str, count: int,
                          prompt_tokens: int, new_tokens: int, seed: int) -> np.ndarray:
    """`count` distinct passages of prompt_tokens + new_tokens from the split's documents,
    drawn with the seed from every non-overlapping chunk there is: (count, length) ids."""
    length = prompt_tokens + new_tokens
    starts = [d.start + i * length for d in documents if d.split == split for i in range(d.length // length)]
    if len(starts) < count:
        raise UserError(f"the {split} split holds only {len(starts)} passages of {prompt_tokens}+{new_tokens} tokens, "
                        f"fewer than generation.passages={count}: lower generation.passages, "
                        "generation.prompt_tokens or generation.new_tokens")
    chosen = np.sort(np.random.default_rng(seed).choice(len(starts), size=count, replace=False))
    return np.stack([np.asarray(tokens[starts[i]:starts[i] + length], dtype=np.int64) for i in chosen])


@dataclass
class LabelledPassages:
    """Fixed windows of one split with a class index each, and the works they came from."""

    windows: np.ndarray  # (P, length) token ids
    labels: np.ndarray  # (P,) class indices
    works_by_class: dict[str, list[str]]

    def counts(self, classes: list[str]) -> dict[str, int]:
        found = Counter(self.labels.tolist())
        return {name: found.get(i, 0) for i, name in enumerate(classes)}


def labelled_passages(documents: list[DocumentSpan], tokens: np.ndarray, split: str, label: str,
                      classes: list[str], length: int, max_count: int | None) -> LabelledPassages:
    """Every non-overlapping window of `length` tokens in the split's documents, thinned evenly
    to at most max_count so that every document keeps its share."""
    starts, labels, works = [], [], defaultdict(set)
    for d in documents:
        if d.split != split:
            continue
        n = d.length // length
        starts += [d.start + i * length for i in range(n)]
        labels += [classes.index(d.meta[label])] * n
        if n:
            works[d.meta[label]].add(d.meta.get("work", d.id))
    if not starts:
        raise UserError(f"the {split} split has no document of {length} tokens or more to classify: "
                        "lower classify.passage_tokens")
    keep = np.arange(len(starts))
    if max_count and len(keep) > max_count:
        keep = np.linspace(0, len(starts) - 1, max_count).round().astype(int)
    windows = np.stack([np.asarray(tokens[starts[i]:starts[i] + length], dtype=np.int64) for i in keep])
    return LabelledPassages(windows, np.asarray(labels)[keep], {c: sorted(w) for c, w in sorted(works.items())})


class BalancedWindows:
    """Endless training batches of random windows, each class equally likely (the poems are a
    small fraction of the corpus), each document of a class weighted by its length."""

    def __init__(self, documents: list[DocumentSpan], tokens: np.ndarray, split: str, label: str,
                 classes: list[str], length: int, seed: int):
        self.tokens, self.length = tokens, length
        self.rng = np.random.default_rng(seed)
        self.by_class: dict[int, tuple[list[DocumentSpan], np.ndarray]] = {}  # documents, chance of each
        for i, name in enumerate(classes):
            docs = [d for d in documents if d.split == split and d.meta.get(label) == name and d.length > length]
            if docs:
                room = np.array([d.length - length for d in docs], dtype=np.float64)
                self.by_class[i] = docs, room / room.sum()
        if len(self.by_class) < 2:
            raise UserError(f"the {split} split has documents of {len(self.by_class)} {label}(s) longer than "
                            f"{length} tokens: classification needs at least two")

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        labels = self.rng.choice(sorted(self.by_class), size=size)
        windows = []
        for label in labels:
            docs, chances = self.by_class[label]
            doc = docs[self.rng.choice(len(docs), p=chances)]
            start = doc.start + self.rng.integers(0, doc.length - self.length)
            windows.append(np.asarray(self.tokens[start:start + self.length], dtype=np.int64))
        return np.stack(windows), labels
