"""Decontamination: remove from the corpus the text an external evaluation set holds.

The test is GPT-3's (and its successors'): a word 13-gram (`data.leakage.ngram`, lowercased
runs of letters and digits, as the leakage check counts them) of the evaluation text found in
a document marks it. The lines that hold a marked n-gram are cut out of the document; a
document left too short for `data.clean`'s filters is dropped whole. It runs before the split
on every kept document, so train (and val and test) hold none of the evaluation text.

Every n-gram of the evaluation files is kept, 8 bytes each (an evaluation set of 10 MB of
text holds about 2M of them: 16 MB). Files: plain text is one text each; in a `.jsonl` file,
each record's string fields, one text each (a question and its answer are both checked).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np

from lightning_llm.data import ngrams
from lightning_llm.data.leakage import contains
from lightning_llm.errors import UserError

EXTENSIONS = (".txt", ".md", ".jsonl", ".json")  # what a directory given to data.decontaminate contributes


def eval_files(paths: list[str]) -> list[Path]:
    """The files named by data.decontaminate (files, directories read recursively, globs)."""
    files: list[Path] = []
    for pattern in paths:
        pattern = str(Path(pattern).expanduser())
        matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))] if glob.has_magic(pattern) \
            else [Path(pattern)] if Path(pattern).exists() else []
        if not matches:
            raise UserError(f"data.decontaminate: nothing at {pattern!r}: give evaluation files, directories or globs")
        for path in matches:
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(EXTENSIONS)) \
                if path.is_dir() else [path]
    return list(dict.fromkeys(files))


def eval_texts(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"data.decontaminate: cannot read {path} as UTF-8 text ({err})") from None
    if path.suffix != ".jsonl":
        return [raw]
    texts = []
    for line in raw.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = line  # not JSON: the line itself is evaluation text
        values = record.values() if isinstance(record, dict) else [record]
        texts += [v for v in values if isinstance(v, str)]
    return texts


class EvalNgrams:
    """The hashed word n-grams of the evaluation files, and what removing them took."""

    def __init__(self, paths: list[str], n: int):
        self.n, self.files = n, eval_files(paths)
        per_file, self.file_stats = [], []
        for path in self.files:
            hashes, short = [], 0
            for text in eval_texts(path):
                units = ngrams.word_units(text)
                if len(units) >= n:
                    hashes.append(ngrams.ngram_hashes(units, n))
                else:
                    short += 1
            joined = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
            per_file.append(joined)
            self.file_stats.append({"file": str(path), "ngrams": len(joined), "texts_too_short": short})
        every = np.concatenate(per_file) if per_file else np.empty(0, dtype=np.uint64)
        owner = np.concatenate([np.full(len(h), k) for k, h in enumerate(per_file)]) if per_file else np.empty(0, int)
        self.hashes, first = np.unique(every, return_index=True)
        self.owner = owner[first]
        self.counts = {"documents_changed": 0, "documents_dropped": 0, "lines_removed": 0, "chars_removed": 0,
                       "ngrams_matched": 0}
        self.examples: list[dict] = []

    def matches(self, doc_ngrams: np.ndarray | None) -> bool:
        return doc_ngrams is not None and bool(contains(self.hashes, doc_ngrams).any())

    def scrub(self, doc_id: str, text: str) -> str:
        """The text without the lines that hold an evaluation n-gram (all of it when the words
        cannot be located: see ngrams.word_bounds)."""
        units = ngrams.word_units(text)
        hashes = ngrams.ngram_hashes(units, self.n) if len(units) >= self.n else np.empty(0, dtype=np.uint64)
        found = contains(self.hashes, hashes)
        hits = np.flatnonzero(found)
        if not len(hits):
            return text
        bounds = ngrams.word_bounds(text)
        rows = text.split("\n")
        if bounds is None:
            drop = np.ones(len(rows), dtype=bool)
        else:
            starts, ends = bounds
            breaks = np.flatnonzero(ngrams.code_points(text) == 10)
            first = np.searchsorted(breaks, starts[hits], side="right")  # the line of an n-gram's first word
            last = np.searchsorted(breaks, ends[hits + self.n - 1] - 1, side="right")
            cover = np.zeros(len(rows) + 1, dtype=np.int64)
            np.add.at(cover, first, 1)
            np.add.at(cover, last + 1, -1)
            drop = np.cumsum(cover)[:len(rows)] > 0
        kept = "\n".join(row for row, gone in zip(rows, drop.tolist()) if not gone)
        self.counts["documents_changed"] += 1
        self.counts["lines_removed"] += int(drop.sum())
        self.counts["chars_removed"] += len(text) - len(kept)
        self.counts["ngrams_matched"] += len(hits)
        if len(self.examples) < 20:
            file = self.files[int(self.owner[np.searchsorted(self.hashes, hashes[hits[0]])])]
            self.examples.append({"id": doc_id, "chars_removed": len(text) - len(kept), "ngrams": len(hits),
                                  "eval_file": str(file)})
        return kept

    def report(self) -> dict:
        return {"ngram": self.n, "files": self.file_stats, **self.counts, "examples": self.examples}
