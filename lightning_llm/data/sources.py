"""Where documents come from: the built-in corpus, text files, JSONL files, HF datasets.

Every reader yields `Document`s one at a time (nothing holds a whole corpus), and turns
bad input into a counted skip instead of a crash: a binary or empty file, invalid
UTF-8, an unreadable or missing path, a JSONL line that is not JSON, a record without
its text field. `Skipped` keeps the count and the first places of each kind; the
prepare step prints one warning line per kind and writes them all to the report.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightning_llm.data.documents import Document

log = logging.getLogger(__name__)
SOURCE_KINDS = ("shakespeare", "text_files", "jsonl", "hf")
DEFAULT_EXTENSIONS = {"text_files": [".txt", ".md"], "jsonl": [".jsonl"]}
_EXAMPLES_KEPT = 20


@dataclass
class SourceConfig:
    """One source. The primary source's keys sit at the top of `data.*`; a mixture adds
    more under `data.mix.<name>`, each with its own kind and weight."""

    source: str = "shakespeare"  # shakespeare | text_files | jsonl | hf
    weight: float = 1.0  # how many times each of its train documents enters the train shard (0.5: half of them)
    editions: list[str] = field(default_factory=lambda: ["gutenberg", "folio"])  # shakespeare
    paths: list[str] = field(default_factory=list)  # text_files, jsonl: files, directories or globs
    extensions: list[str] | None = None  # text_files, jsonl: files read from a directory (default .txt .md / .jsonl)
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


def read_source(name: str, config: SourceConfig, skipped: Skipped) -> Iterator[Document]:
    """Documents of one source, tagged with its name."""
    if config.source == "shakespeare":
        from lightning_llm.data.shakespeare import read_shakespeare
        docs = read_shakespeare(config.editions, skipped)
    elif config.source == "text_files":
        docs = read_text_files(config, skipped)
    elif config.source == "jsonl":
        docs = read_jsonl(config, skipped)
    else:
        docs = read_hf(config, skipped)
    for doc in docs:
        doc.source = name
        yield doc


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
                files += sorted(p for p in path.rglob("*") if p.name.endswith(extensions) and not p.is_dir())
            else:
                files.append(path)
    return list(dict.fromkeys(files))  # a file named twice is read once


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


def read_text_files(config: SourceConfig, skipped: Skipped) -> Iterator[Document]:
    for path in source_files(config, skipped):
        text = read_file_text(path, skipped)
        if text is not None:
            yield Document(id=str(path), text=text, source="", meta={"dir": str(path.parent), "file": path.name},
                           origin=str(path))


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
        return shakespeare_fingerprint(config.editions)
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
