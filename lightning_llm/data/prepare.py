"""From sources to token shards: read -> clean -> split -> train tokenizer -> write shards.

The result is a folder `<cache_root>/<name>-<hash>/` holding `tokenizer.json`,
`{train,val,test}.bin` (flat token ids, numpy memmaps), `documents.jsonl` (each document's
split, metadata and token span [start, end) in its split's shard, EOT excluded),
`meta.json` and `report.json`.
The hash covers the data and tokenizer config and a fingerprint of the sources, so the
same config reuses the folder and any change rebuilds it. The folder is built under a
temporary name and renamed when complete: an interrupted run leaves nothing to reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lightning_llm.data import clean, shakespeare
from lightning_llm.data.documents import Document
from lightning_llm.data.split import SPLITS, split_documents
from lightning_llm.data.tokenizer import EOT, UNK, TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError

log = logging.getLogger(__name__)
PIPELINE_VERSION = 2  # bump when a step's output changes for the same config


@dataclass
class CleanConfig:
    strip_gutenberg: bool = True
    unicode_form: str = "NFC"  # NFC | NFKC | NFD | NFKD

    def __post_init__(self):
        if self.unicode_form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"clean.unicode_form must be NFC, NFKC, NFD or NFKD, got {self.unicode_form!r}")


@dataclass
class SplitConfig:
    val: float = 0.1
    test: float = 0.1
    seed: int = 1337
    group_by: str = "work"  # documents sharing this key land in one split
    stratify_by: str | None = "genre"  # each split keeps the corpus's mix of this key

    def __post_init__(self):
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"split.val ({self.val}) and split.test ({self.test}) must be in [0, 1) and sum below 1")


@dataclass
class DataConfig:
    name: str = "shakespeare"
    source: str = "shakespeare"
    editions: list[str] = field(default_factory=lambda: ["gutenberg", "folio"])
    clean: CleanConfig = field(default_factory=CleanConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"data.name {self.name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
        if self.source != "shakespeare":
            raise ValueError(f"data.source {self.source!r} is not known: the built-in source is 'shakespeare'")


@dataclass
class PreparedData:
    """A finished prepared-data folder: what training and evaluation read."""

    dir: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / "tokenizer.json"

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.dir / f"{split}.bin", dtype=self.meta["dtype"], mode="r")


def cache_key(data: DataConfig, tokenizer: TokenizerConfig) -> str:
    # A char vocabulary is whatever the train split holds: its other knobs must not split the cache.
    tok = {"kind": "char"} if tokenizer.kind == "char" else asdict(tokenizer)
    payload = {"version": PIPELINE_VERSION, "data": asdict(data), "tokenizer": tok,
               "sources": shakespeare.fingerprint(data.editions)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def prepare(data: DataConfig, tokenizer: TokenizerConfig, cache_root: str | Path) -> PreparedData:
    """Return the prepared folder for this config, building it only if it is not cached."""
    cache_root = Path(cache_root)
    target = cache_root / f"{data.name}-{cache_key(data, tokenizer)}"
    if (target / "meta.json").exists():
        log.info("prepared data: reusing %s", target)
        return PreparedData(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        build(data, tokenizer, work)
        try:
            os.rename(work, target)
        except OSError:  # another process finished the same folder first: theirs is as good
            if not (target / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("prepared data: wrote %s", target)
    return PreparedData(target)


def build(data: DataConfig, tok_config: TokenizerConfig, out: Path) -> None:
    report: dict = {"config": {"data": asdict(data), "tokenizer": asdict(tok_config)}, "steps": {}}
    t0 = time.perf_counter()
    docs = list(shakespeare.read_shakespeare(data.editions))
    report["steps"]["read"] = {"documents": len(docs), "chars": sum(len(d.text) for d in docs)}

    docs = clean_documents(docs, data.clean, report["steps"])
    if not docs:
        raise UserError(f"no documents left after cleaning data '{data.name}': check the source and the clean options")

    try:
        splits = split_documents(docs, data.split.val, data.split.test, data.split.seed,
                                 data.split.group_by, data.split.stratify_by)
    except KeyError as err:
        raise UserError(f"data.split: {err.args[0]}") from None
    report["steps"]["split"] = {name: split_summary(split_docs, data.split) for name, split_docs in splits.items()}
    for name in SPLITS:
        if not splits[name] and (name == "train" or getattr(data.split, name) > 0):
            raise UserError(f"the {name} split is empty: the corpus has too few groups for "
                            f"val={data.split.val} test={data.split.test}")

    tokenizer = train_tokenizer(tok_config, (d.text for d in splits["train"]))
    tokenizer.save(str(out / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    eot_id, unk_id = tokenizer.token_to_id(EOT), tokenizer.token_to_id(UNK)

    meta = {"name": data.name, "vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "eot_id": eot_id,
            "tokenizer": tok_config.kind, "splits": {}}
    index = open(out / "documents.jsonl", "w")
    for name in SPLITS:
        n_tokens = n_bytes = n_unk = 0
        with open(out / f"{name}.bin", "wb") as f:
            for start in range(0, len(splits[name]), 16):  # encode_batch runs on all cores
                batch = splits[name][start:start + 16]
                texts = [d.text for d in batch]
                for doc, text, enc in zip(batch, texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
                    ids = np.asarray(enc.ids + [eot_id], dtype=dtype)
                    ids.tofile(f)
                    index.write(json.dumps({"id": doc.id, "source": doc.source, "split": name, "meta": doc.meta,
                                            "start": n_tokens, "end": n_tokens + ids.size - 1}) + "\n")
                    n_tokens += ids.size
                    n_bytes += len(text.encode("utf-8"))
                    if unk_id is not None:
                        n_unk += int((ids == unk_id).sum())
        meta["splits"][name] = {"tokens": n_tokens, "bytes": n_bytes, "documents": len(splits[name]),
                                "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4)}
        report["steps"].setdefault("tokenize", {})[name] = {"tokens": n_tokens, "bytes": n_bytes,
                                                           "unknown_rate": round(n_unk / max(n_tokens, 1), 6)}
    index.close()
    report["steps"]["tokenize"]["vocab_size"] = vocab_size
    report["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


def clean_documents(docs: list[Document], config: CleanConfig, steps: dict) -> list[Document]:
    changed = {"strip_gutenberg": 0, "normalize": 0}
    removed_chars = {"strip_gutenberg": 0, "normalize": 0}
    kept, dropped_empty = [], []
    for doc in docs:
        text = doc.text
        if config.strip_gutenberg:
            stripped = clean.strip_gutenberg(text)
            changed["strip_gutenberg"] += stripped != text
            removed_chars["strip_gutenberg"] += len(text) - len(stripped)
            text = stripped
        normalized = clean.normalize(text, config.unicode_form)
        changed["normalize"] += normalized != text
        removed_chars["normalize"] += len(text) - len(normalized)
        if normalized.strip():
            kept.append(Document(doc.id, normalized, doc.source, doc.meta))
        else:
            dropped_empty.append(doc.id)
    steps["clean"] = {"documents_changed": changed, "chars_removed": removed_chars,
                      "dropped": {"empty after cleaning": dropped_empty}, "kept": len(kept)}
    return kept


def split_summary(docs: list[Document], config: SplitConfig) -> dict:
    summary = {"documents": len(docs), "groups": len({d.key(config.group_by) for d in docs}),
               "chars": sum(len(d.text) for d in docs)}
    if config.stratify_by:
        strata: dict[str, int] = {}
        for d in docs:
            strata[d.key(config.stratify_by)] = strata.get(d.key(config.stratify_by), 0) + len(d.text)
        summary["chars_by_" + config.stratify_by] = dict(sorted(strata.items()))
    return summary
