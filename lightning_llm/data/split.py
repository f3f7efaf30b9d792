"""Train/val/test assignment by group, stratified, seeded.

A group is everything that must not straddle splits: documents sharing the `group_by`
key (a work and all its editions) joined with near-duplicate clusters, as connected
components, so no text is seen in training and then scored as held out. Within each
stratum (a genre, a source) groups are shuffled with the seed, ordered by size class, and
dealt greedily to the split furthest below its target share of characters, so every
split keeps the mix.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import xxhash

from lightning_llm.data.dedup import components, labels_to_groups
from lightning_llm.data.documents import Document

SPLITS = ("train", "val", "test")
MISSING = "(none)"  # the stratum of a document without the stratify_by field


@dataclass
class SplitConfig:
    val: float = 0.1
    test: float = 0.1
    seed: int = 1337
    group_by: str | None = None  # documents sharing this key land in one split (near-dup clusters always do)
    stratify_by: str | None = "source"  # each split keeps the corpus's mix of this key: source, genre...
    # Documents sharing at least this share of their word n-grams (data.leakage.ngram, of the one
    # with fewer) land in one split (null: off); needs the leakage check's n-grams.
    containment: float | None = 0.5
    # The leakage gate: past this share of val or test n-grams found in train, warn (on_leak=warn)
    # or refuse (on_leak=error); null: no gate.
    max_leakage: float | None = 0.05
    on_leak: str = "warn"

    def __post_init__(self):
        if self.containment is not None and not 0 < self.containment <= 1:
            raise ValueError(f"data.split.containment must be in (0, 1] or null, got {self.containment}")
        if self.max_leakage is not None and not 0 <= self.max_leakage <= 1:
            raise ValueError(f"data.split.max_leakage must be in [0, 1] or null, got {self.max_leakage}")
        if self.on_leak not in ("warn", "error"):
            raise ValueError(f"data.split.on_leak must be warn or error, got {self.on_leak!r}")
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"data.split.val ({self.val}) and data.split.test ({self.test}) must be in [0, 1) "
                             "and sum below 1")


def group_pairs(values: list) -> list[tuple[int, int]]:
    """Pairs joining every document to the first one with the same (non-missing) value."""
    first: dict[str, int] = {}
    pairs = []
    for i, value in enumerate(values):
        if value is not None:
            pairs.append((first.setdefault(value, i), i))
    return [(a, b) for a, b in pairs if a != b]


def assign_splits(names: list[str], sizes: list[int], strata: list[str | None], groups: np.ndarray,
                  config: SplitConfig) -> list[str]:
    """The split of each document. `groups` labels each document's group (documents with one
    label go together); a group is known by the least of its members' names (group key or id),
    so the seeded order does not depend on input order, and its stratum is the one that holds
    most of its characters."""
    targets = {"train": 1 - config.val - config.test, "val": config.val, "test": config.test}
    by_stratum: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)
    for docs in labels_to_groups(groups):
        weight: dict[str, int] = defaultdict(int)
        for i in docs:
            weight[strata[i] or MISSING] += sizes[i]
        stratum = max(sorted(weight), key=weight.__getitem__)
        by_stratum[stratum].append((min(names[i] for i in docs), docs))

    rng = random.Random(config.seed)
    split_of = [""] * len(names)
    for stratum in sorted(by_stratum):
        group_list = [(sum(sizes[i] for i in docs), docs) for _, docs in sorted(by_stratum[stratum])]
        rng.shuffle(group_list)
        # Larger size classes (powers of two) first, shuffled within a class: big groups are placed
        # while every split has room, and small ones even out the shares.
        group_list.sort(key=lambda group: -max(group[0], 1).bit_length())
        total = sum(size for size, _ in group_list)
        filled = dict.fromkeys(SPLITS, 0)
        # Deal each group to the split furthest below its target; ties go to a held-out split.
        for size, docs in group_list:
            deficit = {s: targets[s] * total - filled[s] for s in SPLITS if targets[s] > 0}
            chosen = max(deficit, key=lambda s: (deficit[s], s != "train"))
            filled[chosen] += size
            for i in docs:
                split_of[i] = chosen
    return split_of


def split_of_documents(docs: list, sizes: list[int], config: SplitConfig, near_pairs: list[tuple[int, int]] = ()
                       ) -> tuple[list[str], list[str | None], np.ndarray]:
    """Each document's split, its stratum and its group label. A group joins the documents that
    share the group_by value, the pieces of one long document, and what near_pairs (indices into
    docs) links."""
    values = [d.key(config.group_by) for d in docs] if config.group_by else [None] * len(docs)
    pieces = [(d.source, d.origin) if d.part else None for d in docs]  # a document's pieces share both
    groups = components(len(docs), group_pairs(values) + group_pairs(pieces) + list(near_pairs))
    strata = [d.key(config.stratify_by) if config.stratify_by else None for d in docs]
    names = [value if value is not None else d.id for value, d in zip(values, docs)]
    return assign_splits(names, sizes, strata, groups, config), strata, groups


def split_documents(docs: list[Document], config: SplitConfig,
                    near_pairs: list[tuple[int, int]] = ()) -> dict[str, list[Document]]:
    """Documents by split, in their given order; near_pairs index docs that must stay together."""
    split_of, _, _ = split_of_documents(docs, [len(d.text) for d in docs], config, near_pairs)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc, split in zip(docs, split_of):
        out[split].append(doc)
    return out


def copies(doc_id: str, weight: float, seed: int) -> int:
    """How many times a train document enters the shard under its source's weight: the whole
    part always, the fraction as a coin seeded by the document, so the mix is reproducible."""
    coin = xxhash.xxh64_intdigest(doc_id.encode(), seed) / 2**64
    return int(weight) + (coin < weight - int(weight))
