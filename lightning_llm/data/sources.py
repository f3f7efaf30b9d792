"""Where documents come from: the built-in corpus, text files, JSONL files, HF datasets.

Every reader yields `Document`s one at a time (nothing holds a whole corpus), and turns
bad input into a counted skip instead of a crash: a binary or empty file, invalid
UTF-8, an unreadable or missing path, something that is not a regular file (a named pipe,
a socket, a device: never opened, since reading one can block forever), a JSONL line that
is not JSON, a record without its text field. `Skipped` keeps the count and the first
places of each kind; the prepare step prints one warning line per kind and writes them
all to the report.

A document longer than `max_chars` characters becomes consecutive pieces of at most that
many, cut after a line break (else a space) in each piece's second half, each a document of
its own with the id `<id>#part<k>` and `part=k`; the split keeps the pieces of one document
together. A text file is read piece by piece, so its size never sets the memory used; a JSONL
record or dataset row is parsed whole first, then cut.
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from lightning_llm.data.documents import Document

log = logging.getLogger(__name__)
SOURCE_KINDS = ("shakespeare", "text_files", "jsonl", "hf")
DEFAULT_EXTENSIONS = {"text_files": [".txt", ".md"], "jsonl": [".jsonl"]}
_EXAMPLES_KEPT = 20
_READ_BYTES = 1 << 18  # block size when a large file is checked as it streams


@dataclass
class SourceConfig:
    """One source. The primary source's keys sit at the top of `data.*`; a mixture adds
    more under `data.mix.<name>`, each with its own kind and weight."""

    source: str = "shakespeare"  # shakespeare | text_files | jsonl | hf
    weight: float = 1.0  # how many times each of its train documents enters the train shard (0.5: half of them)
    editions: list[str] = field(default_factory=lambda: ["gutenberg", "folio"])  # shakespeare
    works: list[str] | None = None  # shakespeare: only these works (None: all), e.g. [hamlet, lear]
    genres: list[str] | None = None  # shakespeare: only works of these genres (comedy, history, tragedy, poem)
    paths: list[str] = field(default_factory=list)  # text_files, jsonl: files, directories or globs
    extensions: list[str] | None = None  # text_files, jsonl: files read from a directory (None: .txt .md / .jsonl)
    text_field: str = "text"  # jsonl, hf: the field holding the text; the other fields become metadata
    id_field: str | None = None  # jsonl, hf: a field holding an id (default: file:line, dataset[row])
    dataset: str | None = None  # hf: a dataset name or a local directory for datasets.load_dataset
    subset: str | None = None  # hf: the dataset's configuration name
    dataset_split: str = "train"  # hf: which split of the dataset to read
    streaming: bool = False  # hf: iterate rows as they arrive instead of building the Arrow cache first

    def __post_init__(self):
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"source {self.source!r} is not known: choose from {', '.join(SOURCE_KINDS)}")
        if not self.weight > 0:
            raise ValueError(f"weight must be above 0, got {self.weight}")
        if self.source in ("text_files", "jsonl") and not self.paths:
            raise ValueError(f"a {self.source} source needs paths=[<file, directory or glob>, ...]")
        if self.source == "hf" and not self.dataset:
            raise ValueError("an hf source needs dataset=<dataset name or local directory>")
        if self.source != "shakespeare" and (self.works is not None or self.genres is not None):
            raise ValueError(f"works and genres select from the built-in corpus: a {self.source} source has none")
        if self.extensions is None and self.source in DEFAULT_EXTENSIONS:
            self.extensions = list(DEFAULT_EXTENSIONS[self.source])


class Skipped:
    """Bad input met while reading: counted by kind with where it was, never fatal."""

    def __init__(self):
        self.count: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, where: str, detail: str = "") -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES_KEPT:
            examples.append(f"{where} ({detail})" if detail else where)

    def warn(self) -> None:
        for kind, n in self.count.items():
            shown = ", ".join(self.examples[kind][:3]) + (", ..." if n > 3 else "")
            log.warning("skipped %d x %s: %s", n, kind, shown)

    def summary(self) -> dict:
        return {kind: {"count": n, "examples": self.examples[kind]} for kind, n in self.count.items()}


def read_source(name: str, config: SourceConfig, skipped: Skipped, max_chars: int | None = None
                ) -> Iterator[Document]:
    """Documents of one source, tagged with its name; with max_chars, none is longer (see above)."""
    if config.source == "shakespeare":
        from lightning_llm.data.shakespeare import read_shakespeare
        docs = read_shakespeare(config.editions, skipped, works=config.works, genres=config.genres)
    elif config.source == "text_files":
        docs = read_text_files(config, skipped, max_chars)
    elif config.source == "jsonl":
        docs = read_jsonl(config, skipped)
    else:
        docs = read_hf(config, skipped)
    for doc in docs:
        doc.source = name
        if max_chars is None or len(doc.text) <= max_chars:
            yield doc
            continue
        for part, text in enumerate(cut_pieces(chunked(doc.text, max_chars), max_chars), start=1):
            yield replace(doc, id=f"{doc.id}#part{part}", text=text, meta=dict(doc.meta), part=part)


def chunked(text: str, size: int) -> Iterator[str]:
    return (text[i:i + size] for i in range(0, len(text), size))


def cut_pieces(chunks: Iterable[str], max_chars: int) -> Iterator[str]:
    """The text the chunks spell, as consecutive pieces of at most max_chars characters, each cut
    after the last line break of its second half, else after the last space there, else at
    max_chars. Holds at most max_chars plus one chunk."""
    rest = ""
    for chunk in chunks:
        rest += chunk
        while len(rest) > max_chars:
            end = cut_point(rest, max_chars)
            yield rest[:end]
            rest = rest[end:]
    if rest:
        yield rest


def cut_point(text: str, max_chars: int) -> int:
    for separator in ("\n", " "):
        at = text.rfind(separator, max_chars // 2, max_chars)
        if at >= 0:
            return at + 1
    return max_chars


def source_files(config: SourceConfig, skipped: Skipped | None = None) -> list[Path]:
    """The files a text_files or jsonl source reads, in a stable order. A directory gives its
    files with the source's extensions (recursively); a glob gives what it matches."""
    extensions = tuple(config.extensions or DEFAULT_EXTENSIONS[config.source])
    files: list[Path] = []
    for pattern in config.paths:
        pattern = str(Path(pattern).expanduser())
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [Path(pattern)] if Path(pattern).exists() or Path(pattern).is_symlink() else []
        if not matches and skipped is not None:
            skipped.add("missing path", pattern, "nothing there")
        for path in matches:
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.name.endswith(extensions) and not p.is_dir())
            else:
                found = [path]
            for file in found:
                kind = special_file_kind(file)
                if kind is None:
                    files.append(file)
                elif skipped is not None:
                    skipped.add("not a regular file", str(file), kind)
    return list(dict.fromkeys(files))  # a file named twice is read once


def special_file_kind(path: Path) -> str | None:
    """What a path is when it is not a regular file (a named pipe, a socket, a device), else None.
    A path that cannot be looked at is left to the reader, which counts it as unreadable."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "named pipe", stat.S_ISSOCK: "socket", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device"}
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def read_file_text(path: Path, skipped: Skipped) -> str | None:
    """A whole text file, or None (and a counted skip) if it is unreadable, binary, invalid or empty."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        skipped.add("unreadable path", str(path), err.strerror or type(err).__name__)
        return None
    if b"\x00" in raw[:8192]:  # how git tells binary from text
        skipped.add("binary file", str(path))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        skipped.add("invalid UTF-8", str(path), f"byte {err.start}")
        return None
    if not text.strip():
        skipped.add("empty file", str(path))
        return None
    return text


def read_text_files(config: SourceConfig, skipped: Skipped, max_chars: int | None = None) -> Iterator[Document]:
    for path in source_files(config, skipped):
        meta = {"dir": str(path.parent), "file": path.name}
        try:
            large = max_chars is not None and path.stat().st_size > max_chars  # n bytes hold at most n characters
        except OSError:
            large = False  # read_file_text counts it
        if not large:
            text = read_file_text(path, skipped)
            if text is not None:
                yield Document(id=str(path), text=text, source="", meta=meta, origin=str(path))
        elif is_text_file(path, skipped):
            with open(path, encoding="utf-8", newline="") as f:
                pieces = cut_pieces(iter(lambda: f.read(max_chars), ""), max_chars)
                for part, text in enumerate(pieces, start=1):
                    yield Document(id=f"{path}#part{part}", text=text, source="", meta=dict(meta), origin=str(path),
                                   part=part)


def is_text_file(path: Path, skipped: Skipped) -> bool:
    """read_file_text's checks (readable, not binary, valid UTF-8, not blank) on a file streamed
    in blocks, so a file of any size is judged whole before any of it is used."""
    decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_READ_BYTES), b""):
                if offset == 0 and b"\x00" in block[:8192]:
                    skipped.add("binary file", str(path))
                    return False
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as err:
                    skipped.add("invalid UTF-8", str(path), f"byte {offset - pending + err.start}")
                    return False
                blank = blank and not text.strip()
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        skipped.add("invalid UTF-8", str(path), f"byte {offset - len(decoder.getstate()[0])}")
        return False
    except OSError as err:
        skipped.add("unreadable path", str(path), err.strerror or type(err).__name__)
        return False
    if blank:
        skipped.add("empty file", str(path))
        return False
    return True


def read_jsonl(config: SourceConfig, skipped: Skipped) -> Iterator[Document]:
    for path in source_files(config, skipped):
        try:
            handle = open(path, "rb")
            head = handle.peek(8192)
        except OSError as err:
            skipped.add("unreadable path", str(path), err.strerror or type(err).__name__)
            continue
        with handle:
            if b"\x00" in head:
                skipped.add("binary file", str(path))
                continue
            found = False
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                found = True
                where = f"{path}:{number}"
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    skipped.add("invalid UTF-8", where, f"byte {err.start}")
                    continue
                except json.JSONDecodeError as err:
                    skipped.add("line is not JSON", where, err.msg)
                    continue
                doc = record_document(record, config, default_id=where, where=where, skipped=skipped)
                if doc is not None:
                    yield doc
            if not found:
                skipped.add("empty file", str(path))


def read_hf(config: SourceConfig, skipped: Skipped) -> Iterator[Document]:
    import datasets

    try:
        rows = datasets.load_dataset(config.dataset, config.subset, split=config.dataset_split,
                                     streaming=config.streaming)
    except Exception as err:  # datasets raises many types for a name, path or split it cannot load
        skipped.add("unloadable dataset", str(config.dataset), " ".join(str(err).split())[:200])
        return
    for number, record in enumerate(rows):
        where = f"{config.dataset}[{number}]"
        record = {k: v for k, v in record.items() if v is None or isinstance(v, (str, int, float, bool))}
        doc = record_document(record, config, default_id=where, where=where, skipped=skipped)
        if doc is not None:
            yield doc


def record_document(record, config: SourceConfig, default_id: str, where: str, skipped: Skipped) -> Document | None:
    """A JSON object or dataset row as a document: its text field is the text, the rest metadata."""
    if not isinstance(record, dict):
        skipped.add("record is not a JSON object", where, type(record).__name__)
        return None
    text = record.get(config.text_field)
    if text is None:
        skipped.add("record without the text field", where, f"no {config.text_field!r}")
        return None
    if not isinstance(text, str):
        skipped.add("text field is not a string", where, type(text).__name__)
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON can spell a lone surrogate, which no tokenizer takes
        skipped.add("invalid UTF-8", where, f"lone surrogate at character {err.start}")
        return None
    doc_id = record.get(config.id_field) if config.id_field else None
    meta = {k: v for k, v in record.items() if k not in (config.text_field, config.id_field)}
    return Document(id=str(doc_id) if doc_id is not None else default_id, text=text, source="", meta=meta,
                    origin=where)


def fingerprint(config: SourceConfig) -> list:
    """What identifies a source's content for the prepared-data cache key: file names, sizes and
    modification times (a Hub dataset is known by name, subset and split only)."""
    if config.source == "shakespeare":
        from lightning_llm.data.shakespeare import fingerprint as shakespeare_fingerprint
        return shakespeare_fingerprint(config.editions, works=config.works, genres=config.genres)
    if config.source == "hf":
        local = Path(config.dataset).expanduser()
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        return [config.dataset, config.subset, config.dataset_split] + [file_stamp(p) for p in files]
    return [file_stamp(p) for p in source_files(config)]


def file_stamp(path: Path) -> list:
    try:
        stat = path.stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def input_bytes(config: SourceConfig) -> int | None:
    """The size of a source's files (for a progress bar), None when unknown."""
    if config.source in ("text_files", "jsonl"):
        return sum(stamp[1] or 0 for stamp in fingerprint(config))
    if config.source == "shakespeare":
        return sum(size for _, size in fingerprint(config)[1:])
    return None
