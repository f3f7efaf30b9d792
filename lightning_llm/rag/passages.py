"""From a folder (or glob) of documents to passages with their file and line range.

Files are found and read by the corpus pipeline's readers (lightning_llm/data/sources.py: binary,
empty, invalid UTF-8 and special files are counted skips) and cleaned by its transforms
(lightning_llm/data/clean.py) line by line, so that every passage keeps the line numbers of the
file it came from: Gutenberg boilerplate and licence notes are blanked rather than cut, whitespace
runs are not collapsed. The pipeline's filters (min_words, ...) apply to a document as a whole.

Only files under the indexed folder are read: a file whose real path (links followed) lies outside
it is refused, listed, and never opened. A glob's folder is the part before its first wildcard.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightning_llm.data.clean import CleanConfig, failed_filter, fix_unicode, gutenberg_spans, strip_control
from lightning_llm.data.sources import Skipped, SourceConfig, read_jsonl, read_text_files, source_files
from lightning_llm.errors import UserError

TEXT_EXTENSIONS = (".txt", ".md")
JSONL_EXTENSIONS = (".jsonl",)


@dataclass
class ChunkConfig:
    """Passage size and overlap, in words; passages are whole lines and never cross documents."""

    words: int = 120  # lines are added to a passage until it holds at least this many words
    overlap: int = 30  # the next passage starts with the last lines of this one holding at least this many words

    def __post_init__(self):
        if self.words < 1:
            raise ValueError(f"chunk.words must be at least 1, got {self.words}")
        if not 0 <= self.overlap < self.words:
            raise ValueError(f"chunk.overlap must be at least 0 and less than chunk.words ({self.words}), "
                             f"got {self.overlap}")


@dataclass
class Passage:
    source: str  # the file's path relative to the indexed folder
    start: int  # first line, 1-based
    end: int  # last line, inclusive
    text: str

    def row(self) -> dict:
        return {"source": self.source, "lines": [self.start, self.end], "text": self.text}


def docs_root(docs: str) -> Path:
    """The indexed folder: `docs` itself, or a glob's part before its first wildcard."""
    parts = Path(os.path.expanduser(docs)).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    if len(fixed) < len(parts):
        root = Path(*fixed) if fixed else Path(".")
    else:
        root = Path(*parts) if parts else Path(".")
        if root.is_file():
            root = root.parent
    if not root.is_dir():
        raise UserError(f"docs={docs}: {root} is not a folder (pass a folder, or a glob such as 'notes/**/*.md')")
    return root.resolve()


def find_files(docs: str, *, extensions: list[str], skipped: Skipped) -> tuple[Path, list[Path], list[str]]:
    """(the indexed folder, the files under it to read, the paths refused as outside it). Files are
    those of the pipeline's source_files (a folder recursively, a glob's matches) with the given
    extensions, in a stable order."""
    root = docs_root(docs)
    pattern = os.path.expanduser(docs)
    config = SourceConfig(source="text_files", paths=[pattern], extensions=list(extensions))
    found = [f for f in source_files(config, skipped) if f.name.endswith(tuple(extensions))]
    inside, outside = [], []
    for file in found:
        real = file.resolve()
        if real == root or root not in real.parents:
            outside.append(str(file))
        else:
            inside.append(real)
    return root, sorted(dict.fromkeys(inside)), outside


def clean_lines(text: str, clean: CleanConfig) -> list[str]:
    """The text's lines (\\n, \\r\\n or \\r ends) cleaned by the pipeline's transforms, one for one:
    line k of the result is line k of the file. Gutenberg headers, footers and licence notes
    become blank lines; trailing spaces go; nothing is joined or dropped."""
    if clean.strip_gutenberg:
        pieces, at = [], 0
        for start, end in gutenberg_spans(text):
            pieces += [text[at:start], "\n" * text.count("\n", start, end)]
            at = end
        text = "".join(pieces) + text[at:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out = []
    for line in lines:
        if clean.fix_unicode:
            line = fix_unicode(line)
        if clean.unicode_form:
            line = unicodedata.normalize(clean.unicode_form, line)
        if clean.strip_control:
            line = strip_control(line)
        if clean.lowercase:
            line = line.lower()
        out.append(line.rstrip())
    return out


def chunk(lines: list[tuple[int, str]], config: ChunkConfig) -> Iterator[tuple[int, int, str]]:
    """(first line, last line, text) of passages over (line number, text) pairs of one document:
    whole non-blank lines until `words` words, the next passage starting with the last lines that
    hold `overlap` words."""
    lines = [(n, t) for n, t in lines if t.strip()]
    counts = [len(t.split()) for _, t in lines]
    i = 0
    while i < len(lines):
        j, words = i, 0
        while j < len(lines) and (words < config.words or j == i):
            words += counts[j]
            j += 1
        yield lines[i][0], lines[j - 1][0], "\n".join(t for _, t in lines[i:j])
        if j >= len(lines):
            return
        k, back = j, 0
        while k - 1 > i and back < config.overlap:
            k -= 1
            back += counts[k]
        i = k if config.overlap else j


def read_passages(files: list[Path], *, root: Path, chunking: ChunkConfig, clean: CleanConfig, text_field: str,
                  skipped: Skipped, progress=None) -> Iterator[Passage]:
    """Passages of every file, in order. .txt and .md files are documents with their own line
    numbers; a .jsonl file's records are documents whose passages cite the record's line."""
    for file in files:
        source = file.relative_to(root).as_posix()
        if file.name.endswith(JSONL_EXTENSIONS):
            config = SourceConfig(source="jsonl", paths=[str(file)], extensions=list(JSONL_EXTENSIONS),
                                  text_field=text_field)
            for doc in read_jsonl(config, skipped):
                line = int(doc.origin.rsplit(":", 1)[1])
                text = "\n".join(clean_lines(doc.text, clean))
                if keep(text, doc.origin, clean, skipped):
                    for _, _, passage in chunk(list(enumerate(text.split("\n"), 1)), chunking):
                        yield Passage(source, line, line, passage)
        else:
            config = SourceConfig(source="text_files", paths=[str(file)], extensions=list(TEXT_EXTENSIONS))
            for doc in read_text_files(config, skipped):
                lines = clean_lines(doc.text, clean)
                if keep("\n".join(lines), str(file), clean, skipped):
                    for start, end, passage in chunk(list(enumerate(lines, 1)), chunking):
                        yield Passage(source, start, end, passage)
        if progress is not None:
            progress.update(1)


def keep(text: str, where: str, clean: CleanConfig, skipped: Skipped) -> bool:
    """A document the pipeline's filters pass (each one that fails is a counted skip)."""
    failed = failed_filter(text, clean)
    if failed is not None:
        skipped.add(f"filtered ({failed[0]})", where, f"{failed[1]}")
        return False
    return True
