"""Exact deduplication of lines and paragraphs across documents (CCNet, RefinedWeb, Dolma).

A template or licence body that many files embed under their own headers makes every
document a near-stranger to the others as a whole (whole-document MinHash cannot see it)
while most of its word 13-grams are shared. Cutting the repeats out keeps the first
occurrence of each long line and paragraph and removes the later ones:

- a line or paragraph is compared normalised: lowercased, every run of whitespace one
  space, so a body wrapped at another width is still the same paragraph;
- one shorter than `min_line_chars` (normalised) is never dropped: a speaker's name, "ACT I.",
  a refrain;
- only repeats of an *earlier document* are dropped: a document's own refrains stay.

The worker processes hash (`span_hashes`); the main process decides, document by document in
corpus order (`SpanDeduper`), so the result does not depend on the number of workers. What is
remembered is one 64-bit hash per distinct long line or paragraph in a sorted numpy array
(`HashSet`): 8 bytes each, at most `max_hashes` of them (128 MB at the default 16M; a merge
briefly needs twice that). Past the cap, later lines are still checked but no longer remembered.
"""

from __future__ import annotations

import numpy as np
import xxhash

from lightning_llm.data.leakage import contains

_LINE_SALT, _PARAGRAPH_SALT = 1, 2  # a one-line paragraph and that line are different keys
_PENDING = 1 << 16  # hashes gathered in a Python set before they are merged into the sorted array


def normalised(text: str) -> str:
    return " ".join(text.lower().split())


def span_hashes(text: str, min_chars: int, lines: bool, paragraphs: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the text's lines (text.split("\\n")): each line's hash (0: blank, short or not
    checked), and its paragraphs (maximal runs of non-blank lines) that are long enough: their
    first line, their end line (exclusive) and their hash."""
    rows = text.split("\n")
    line_hashes = np.zeros(len(rows), dtype=np.uint64)
    starts, ends, hashes = [], [], []
    start = None
    length = 0  # the paragraph's raw characters so far: normalising never lengthens it much
    for i, row in enumerate(rows + [""]):
        blank = not row.strip()
        if lines and len(row) >= min_chars:  # a shorter line cannot normalise to min_chars (but for 'İ'...)
            key = normalised(row)
            if len(key) >= min_chars:
                line_hashes[i] = xxhash.xxh3_64_intdigest(key.encode(), _LINE_SALT) or 1
        if paragraphs:
            if not blank:
                start = i if start is None else start
                length += len(row) + 1
            elif start is not None:
                if length > min_chars:
                    key = normalised(" ".join(rows[start:i]))
                    if len(key) >= min_chars:
                        starts.append(start), ends.append(i)
                        hashes.append(xxhash.xxh3_64_intdigest(key.encode(), _PARAGRAPH_SALT))
                start, length = None, 0
    return line_hashes, np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), \
        np.array(hashes, dtype=np.uint64)


class HashSet:
    """A set of 64-bit hashes in a sorted numpy array (8 bytes each) plus a small Python set of
    recent ones, holding at most `capacity`; past it, `add` keeps nothing more and counts what
    it refused."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.sorted = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.refused = 0

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = contains(self.sorted, hashes)
        if self.recent:
            found |= np.fromiter((h in self.recent for h in hashes.tolist()), dtype=bool, count=len(hashes))
        return found

    def add(self, hashes: np.ndarray) -> None:
        for h in hashes.tolist():
            if len(self) >= self.capacity:
                self.refused += 1
            else:
                self.recent.add(h)
        if len(self.recent) >= _PENDING:
            self.flush()

    def flush(self) -> None:
        if self.recent:
            new = np.setdiff1d(np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)), self.sorted)
            self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, new), new)
            self.recent = set()


class SpanDeduper:
    """Drops the long lines and paragraphs an earlier document held, and counts them."""

    def __init__(self, *, min_chars: int, max_hashes: int):
        self.min_chars = min_chars
        self.seen = HashSet(max_hashes)
        self.counts = {"documents_changed": 0, "lines_removed": 0, "paragraphs_removed": 0, "chars_removed": 0}
        self.examples: list[dict] = []

    def apply(self, doc_id: str, text: str, hashes: tuple) -> tuple[str, list]:
        """The text without the spans seen in earlier documents (the same object when nothing
        was), and what to `commit` once the document is kept."""
        line_hashes, starts, ends, paragraph_hashes = hashes
        commit = [line_hashes[line_hashes != 0], paragraph_hashes]
        seen_paragraphs = np.flatnonzero(self.seen.contains(paragraph_hashes)) if len(paragraph_hashes) else []
        drop = np.zeros(len(line_hashes), dtype=bool)
        for k in seen_paragraphs:
            drop[starts[k]:ends[k]] = True
        checked = np.flatnonzero((line_hashes != 0) & ~drop)
        repeated = checked[self.seen.contains(line_hashes[checked])] if len(checked) else checked
        drop[repeated] = True
        if not drop.any():
            return text, commit
        rows = text.split("\n")
        for k in seen_paragraphs:  # a dropped paragraph takes the blank lines that follow it
            stop = int(ends[k])
            while stop < len(rows) - 1 and not rows[stop].strip():  # the text's last line break stays
                drop[stop] = True
                stop += 1
        kept = "\n".join(row for row, gone in zip(rows, drop.tolist()) if not gone)
        paragraphs_removed, lines_removed = len(seen_paragraphs), len(repeated)
        removed = len(text) - len(kept)
        self.counts["documents_changed"] += 1
        self.counts["lines_removed"] += lines_removed
        self.counts["paragraphs_removed"] += paragraphs_removed
        self.counts["chars_removed"] += removed
        if len(self.examples) < 20:
            first = next(normalised(row) for row, gone in zip(rows, drop.tolist()) if gone and row.strip())
            self.examples.append({"id": doc_id, "chars_removed": removed, "first": first[:80]})
        return kept, commit

    def commit(self, commit: list) -> None:
        for hashes in commit:
            self.seen.add(np.unique(hashes))

    def report(self, config) -> dict:
        self.seen.flush()
        return {"lines": config.lines, "paragraphs": config.paragraphs, "min_line_chars": self.min_chars,
                **self.counts, "hashes_held": len(self.seen), "hashes_refused": self.seen.refused,
                "max_hashes": self.seen.capacity, "examples": self.examples}
