"""Train/val/test assignment by group, stratified, seeded.

Whole groups (a work and all its editions; later, a near-duplicate cluster) go to one
split, so no text is seen in training and then scored as held out. Within each stratum
(a genre, a source) groups are shuffled with the seed and dealt greedily to the split
furthest below its target share of characters, so every split keeps the corpus's mix.
"""

from __future__ import annotations

import random
from collections import defaultdict

from lightning_llm.data.documents import Document

SPLITS = ("train", "val", "test")


def split_documents(docs: list[Document], val: float, test: float, seed: int,
                    group_by: str = "id", stratify_by: str | None = None) -> dict[str, list[Document]]:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val ({val}) and test ({test}) fractions must be in [0, 1) and sum below 1")
    targets = {"train": 1 - val - test, "val": val, "test": test}
    groups: dict[str, list[Document]] = defaultdict(list)
    for doc in docs:
        groups[doc.key(group_by)].append(doc)
    strata: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        strata[members[0].key(stratify_by) if stratify_by else "all"].append(name)

    rng = random.Random(seed)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for stratum in sorted(strata):
        names = sorted(strata[stratum])
        rng.shuffle(names)
        size = {n: sum(len(d.text) for d in groups[n]) for n in names}
        total = sum(size.values())
        filled = dict.fromkeys(SPLITS, 0)
        # Deal each group to the split furthest below its target; ties go to a held-out split.
        for name in names:
            deficit = {s: targets[s] * total - filled[s] for s in SPLITS if targets[s] > 0}
            chosen = max(deficit, key=lambda s: (deficit[s], s != "train"))
            filled[chosen] += size[name]
            out[chosen].extend(groups[name])
    for split in out.values():
        split.sort(key=lambda d: d.id)
    return out
