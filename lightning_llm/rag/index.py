"""A BM25 index of passages (bm25s), built once, saved, loaded by the server, searched per request.

An index folder `<output_root>/index/<name>/` holds

  index.json      what it is: format, the indexed folder, the settings, the files' fingerprint, counts
  passages.jsonl  one passage per line: {source (relative to the folder), lines [first, last], text}
  bm25/           bm25s's own save: the score matrix as .npy arrays, vocabulary and parameters as JSON

Nothing in it needs pickle: bm25s loads its arrays with numpy's allow_pickle=False (an array that
would need it is refused), the rest is JSON. The folder is written under a temporary name and
swapped in whole. A second build over the same files (same paths, sizes and modification times)
with the same settings finds the fingerprint equal and keeps the index as it is.

Retrieval: the query is tokenized as the passages were (bm25s's tokenizer: lowercase words of
two or more letters, stopwords out if asked, PyStemmer's stemmer), scored with BM25, and the top k
passages with a score above zero come back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from lightning_llm.artifacts import Busy, exclusive, staged_folder, write_json, write_jsonl
from lightning_llm.config import check_name
from lightning_llm.data.clean import CleanConfig
from lightning_llm.data.sources import Skipped, file_stamp
from lightning_llm.errors import UserError
from lightning_llm.rag.passages import (
    JSONL_EXTENSIONS,
    TEXT_EXTENSIONS,
    ChunkConfig,
    Passage,
    find_files,
    read_passages,
)

FORMAT = "lightning-llm/index"
FORMAT_VERSION = 1
META, PASSAGES, BM25_DIR = "index.json", "passages.jsonl", "bm25"


@dataclass
class RetrieverConfig:
    """How text becomes BM25 terms, and BM25's parameters (bm25s's names)."""

    stemmer: str | None = "english"  # a PyStemmer language; null: no stemming
    stopwords: str | None = None  # "en": bm25s's English stopword list; null: keep every word
    method: str = "lucene"  # robertson | atire | bm25l | bm25+ | lucene
    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self):
        if self.method not in ("robertson", "atire", "bm25l", "bm25+", "lucene"):
            raise ValueError(f"retriever.method must be robertson, atire, bm25l, bm25+ or lucene, got {self.method!r}")
        if self.stopwords is not None:
            from bm25s.tokenization import _infer_stopwords  # bm25s's own lookup of its lists by name

            try:
                _infer_stopwords(self.stopwords)
            except ValueError:
                raise ValueError(f"retriever.stopwords={self.stopwords!r} is not one of bm25s's lists (en, de, fr, "
                                 "es, ...; null: none)") from None
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError("retriever.k1 must be at least 0 and retriever.b in [0, 1]")
        if self.stemmer is not None:
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise ValueError(f"retriever.stemmer={self.stemmer!r} is not a PyStemmer language: "
                                 f"{', '.join(Stemmer.algorithms())}")


@dataclass
class IndexSettings:
    """What an index is built from, beside the files: recorded in index.json, part of its fingerprint."""

    extensions: list[str] = field(default_factory=lambda: [*TEXT_EXTENSIONS, *JSONL_EXTENSIONS])
    text_field: str = "text"  # .jsonl: the field holding a record's text
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)

    def __post_init__(self):
        known = (*TEXT_EXTENSIONS, *JSONL_EXTENSIONS)
        unknown = [e for e in self.extensions if e not in known]
        if unknown or not self.extensions:
            raise ValueError(f"extensions must be some of {', '.join(known)}, got {self.extensions}")


@dataclass
class Hit:
    source: str
    lines: list[int]
    score: float
    text: str
    passage: int  # its number in the index (passages.jsonl's line - 1)

    def citation(self) -> dict:
        return {"source": self.source, "lines": list(self.lines), "score": round(self.score, 4), "text": self.text}


def import_bm25s():
    """bm25s, its logger quietened: it sets itself to DEBUG on import ("Building index from IDs objects")."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def index_dir(output_root: str | Path, name: str) -> Path:
    return Path(output_root) / "index" / check_name(name, "name")


class Tokenize:
    """bm25s's tokenizer with the index's stemmer and stopwords: passages and queries alike."""

    def __init__(self, config: RetrieverConfig):
        self.bm25s = import_bm25s()
        self.stopwords = config.stopwords or []
        self.stemmer = None
        if config.stemmer is not None:
            import Stemmer

            self.stemmer = Stemmer.Stemmer(config.stemmer)

    def __call__(self, texts: list[str], *, return_ids: bool):
        return self.bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=return_ids,
                                   show_progress=False)


def fingerprint(files: list[Path], root: Path, settings: IndexSettings) -> str:
    """The files (relative paths, sizes, modification times) and every setting, hashed."""
    stamps = [[p.relative_to(root).as_posix(), *file_stamp(p)[1:]] for p in files]
    payload = {"format": FORMAT_VERSION, "bm25s": version("bm25s"), "settings": asdict(settings), "files": stamps}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class BuildResult:
    path: Path
    reused: bool
    meta: dict
    outside: list[str]
    skipped: Skipped


def build_index(*, docs: str, name: str, output_root: str | Path, settings: IndexSettings, force: bool = False,
                progress: bool = True) -> BuildResult:
    """Index the documents under `docs` as `<output_root>/index/<name>/`, or keep the index there
    when its fingerprint says nothing changed."""
    out = index_dir(output_root, name)
    skipped = Skipped()
    root, files, outside = find_files(docs, extensions=settings.extensions, skipped=skipped)
    if not files:
        refused = f" ({len(outside)} outside it refused)" if outside else ""
        raise UserError(f"docs={docs}: no {'/'.join(settings.extensions)} files under {root}{refused}")
    stamp = fingerprint(files, root, settings)
    old = read_meta(out) if (out / META).is_file() else None
    if not force and old is not None and old.get("fingerprint") == stamp and old.get("root") == str(root):
        return BuildResult(out, True, old, outside, skipped)
    try:
        with exclusive(out.parent):
            return _build(out, name=name, docs=docs, root=root, files=files, outside=outside, settings=settings,
                          stamp=stamp, skipped=skipped, progress=progress)
    except Busy as err:
        raise UserError(f"name={name}: {err}; wait for it to finish") from None


def _build(out: Path, *, name: str, docs: str, root: Path, files: list[Path], outside: list[str],
           settings: IndexSettings, stamp: str, skipped: Skipped, progress: bool) -> BuildResult:
    from tqdm import tqdm

    bm25s = import_bm25s()

    started = time.perf_counter()
    # A bar on a terminal (disable=None: off when stderr is not one, so logs get no bar residue).
    with tqdm(total=len(files), desc=f"index {name}", unit="file", disable=None if progress else True,
              leave=False) as bar:
        passages = list(read_passages(files, root=root, chunking=settings.chunk, clean=settings.clean,
                                      text_field=settings.text_field, skipped=skipped, progress=bar))
    if not passages:
        kinds = ", ".join(f"{n} {kind}" for kind, n in skipped.count.items()) or "every file was blank"
        raise UserError(f"docs={docs}: {len(files)} file{'s' if len(files) != 1 else ''} under {root} gave no "
                        f"passages ({kinds})")
    tokens = Tokenize(settings.retriever)([p.text for p in passages], return_ids=True)
    r = settings.retriever
    retriever = bm25s.BM25(method=r.method, k1=r.k1, b=r.b)
    retriever.index(tokens, show_progress=False)
    seconds = time.perf_counter() - started
    with staged_folder(out) as staging:
        retriever.save(str(staging / BM25_DIR))
        write_jsonl(staging / PASSAGES, (p.row() for p in passages))
        size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "docs": docs, "root": str(root),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bm25s": version("bm25s"), "fingerprint": stamp,
                "files": len(files), "passages": len(passages), "terms": len(retriever.vocab_dict),
                "build_seconds": round(seconds, 3), "bytes": size, "settings": asdict(settings),
                "refused_outside": outside, "skipped": skipped.summary()}
        write_json(staging / META, meta)
    return BuildResult(out, False, meta, outside, skipped)


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}/{META} is not readable ({type(err).__name__}): rebuild it with `llm index`") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{folder} is not an index written by `llm index` (no {FORMAT} in {META})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{folder} is index format {meta['format_version']}, newer than this lightning-llm reads")
    return meta


class Index:
    """A loaded index: search(query, k) -> the best passages."""

    def __init__(self, folder: Path, meta: dict, retriever, passages: list[dict]):
        self.folder, self.meta, self.retriever, self.passages = folder, meta, retriever, passages
        self.name = meta["name"]
        self.tokenize = Tokenize(RetrieverConfig(**meta["settings"]["retriever"]))

    def search(self, query: str, k: int) -> list[Hit]:
        """The top k passages for the query whose score is above zero, best first."""
        terms = self.tokenize([query], return_ids=False)[0]
        ids = self.retriever.get_tokens_ids(terms)
        if not ids or k < 1:
            return []
        k = min(k, len(self.passages))
        found, scores = self.retriever.retrieve([ids], k=k, show_progress=False, n_threads=0)
        hits = []
        for i, score in zip(found[0].tolist(), scores[0].tolist()):
            if score > 0:
                p = self.passages[i]
                hits.append(Hit(p["source"], list(p["lines"]), float(score), p["text"], i))
        return hits


def load_index(folder: str | Path, *, what: str = "rag.index") -> Index:
    """An index folder as built by build_index; whatever is missing or wrong is one UserError."""
    bm25s = import_bm25s()
    folder = Path(folder)
    if not (folder / META).is_file():
        raise UserError(f"{what}={folder.name}: no index at {folder} (build it with `llm index docs=<folder> "
                        f"name={folder.name}`)")
    meta = read_meta(folder)
    passages = []
    try:
        with open(folder / PASSAGES, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                passages.append(check_passage(json.loads(line), number))
        retriever = bm25s.BM25.load(str(folder / BM25_DIR), mmap=False, allow_pickle=False, load_corpus=False,
                                    show_progress=False)
    except UserError:
        raise
    except Exception as err:  # a missing file, a truncated array, an array that needs pickle, bad JSON
        raise UserError(f"{what}={folder.name}: the index at {folder} does not load ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); rebuild it with `llm index`") from None
    if not passages:
        raise UserError(f"{what}={folder.name}: the index at {folder} is empty (no passages): rebuild it with "
                        "`llm index` over a folder that has text")
    if retriever.scores["num_docs"] != len(passages):
        raise UserError(f"{what}={folder.name}: the index at {folder} has {retriever.scores['num_docs']} scored "
                        f"passages but {len(passages)} in {PASSAGES}: rebuild it with `llm index`")
    return Index(folder, meta, retriever, passages)


def check_passage(row, number: int) -> dict:
    """A passage row as build_index writes it; a source that would point outside the indexed
    folder (absolute, or with '..') is refused."""
    if not isinstance(row, dict) or not isinstance(row.get("source"), str) or not isinstance(row.get("text"), str) \
            or not (isinstance(row.get("lines"), list) and len(row["lines"]) == 2
                    and all(isinstance(n, int) and n >= 1 for n in row["lines"])):
        raise UserError(f"{PASSAGES} line {number} is not a passage ({{source, lines: [first, last], text}})")
    source = Path(row["source"])
    if source.is_absolute() or ".." in source.parts or not source.parts:
        raise UserError(f"{PASSAGES} line {number}: source {row['source']!r} is outside the indexed folder")
    return row


__all__ = ["BuildResult", "Hit", "Index", "IndexSettings", "Passage", "RetrieverConfig", "build_index", "index_dir",
           "load_index"]
