"""From sources to token shards: read -> clean -> dedup -> split -> tokenizer -> shards -> report.

The result is a folder `<cache_root>/<name>-<hash>/` holding `tokenizer.json`,
`{train,val,test}.bin` and `documents.jsonl` (see shards.py), `meta.json`, `report.json`,
and the data card `report.md` with `lengths.png`.

Memory stays bounded by a buffer, not by the corpus: documents stream from the sources
(none longer than data.max_document_chars) through worker processes (cleaning, hashing,
MinHash), and the kept texts go to a spool file in the build folder (corpus.py). What stays
in memory per document is small: its id, metadata, MinHash signature and a capped sample of
n-gram hashes; and per distinct long line or paragraph one 8-byte hash, capped (spans.py). The spool is then read twice: once to train the tokenizer on the train split,
once to write the shards. Each step returns its results and its part of the report;
`build` runs them in order and writes the report.

The hash covers the data and tokenizer config and a fingerprint of the sources, so the
same config reuses the folder and any change rebuilds it. The folder is built under a
temporary name that carries the host and process id, and renamed when complete: an
interrupted run leaves nothing to reuse, and the next run removes what a dead one left.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from lightning_llm.artifacts import write_json
from lightning_llm.data import clean, ngrams
from lightning_llm.data.config import DataConfig
from lightning_llm.data.corpus import Clock, Corpus, in_batches, worker_pool
from lightning_llm.data.decontaminate import EvalNgrams, eval_files
from lightning_llm.data.dedup import NearDuplicates, Signer, components, containment_pairs, exact_key, labels_to_groups
from lightning_llm.data.documents import Document
from lightning_llm.data.leakage import NgramSample
from lightning_llm.data.prepared import PreparedData
from lightning_llm.data.report import write_report
from lightning_llm.data.shards import write_shards
from lightning_llm.data.sources import Skipped, file_stamp, fingerprint, input_bytes, read_source
from lightning_llm.data.spans import SpanDeduper, span_hashes
from lightning_llm.data.split import MISSING, SPLITS, SplitConfig, assign_splits, split_of_documents
from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError

log = logging.getLogger(__name__)
PIPELINE_VERSION = 5  # bump when a step's output changes for the same config
_BATCH_BYTES = 1 << 19  # documents per worker task, by size
_BUILDING = re.compile(r"\..+\.build-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")  # a build folder's name


def cache_key(data: DataConfig, tokenizer: TokenizerConfig, *, tokenizer_json: str | None = None) -> str:
    """With tokenizer_json (a given tokenizer, not trained here: fine-tuning keeps its base model's),
    the key covers that tokenizer's content instead of the knobs that would train one."""
    config = asdict(data)
    del config["workers"]
    identity = tokenizer.identity() if tokenizer_json is None else \
        {"given": hashlib.sha256(tokenizer_json.encode()).hexdigest()}
    payload = {"version": PIPELINE_VERSION, "data": config, "tokenizer": identity,
               "sources": {name: fingerprint(source) for name, source in data.sources().items()},
               "decontaminate": [file_stamp(path) for path in eval_files(data.decontaminate)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare(data: DataConfig, tokenizer: TokenizerConfig, cache_root: str | Path, *,
            tokenizer_json: str | None = None) -> PreparedData:
    """Return the prepared folder for this config, building it only if it is not cached.
    tokenizer_json: encode with this tokenizer instead of training one (its folder has its own hash)."""
    cache_root = Path(cache_root)
    target = cache_root / f"{data.name}-{cache_key(data, tokenizer, tokenizer_json=tokenizer_json)}"
    if (target / "meta.json").exists():
        log.info("prepared data: reusing %s", target)
        return PreparedData(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_dead_builds(cache_root)
    log.info("prepared data: building %s", target)
    # os.mkdir, unlike tempfile.mkdtemp (0700), gives the folder the user's umask, which the rename keeps.
    work = cache_root / f".{target.name}.build-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        build(data, tokenizer, work, tokenizer_json=tokenizer_json)
        try:
            os.rename(work, target)
        except OSError:  # another process finished the same folder first: theirs is as good
            if not (target / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("prepared data: wrote %s (data card: report.md)", target)
    return PreparedData(target)


def remove_dead_builds(cache_root: Path) -> None:
    """Remove the build folders whose process is gone (killed, or its machine restarted): only
    those of this host, and never one whose process still runs."""
    host = socket.gethostname()
    for path in cache_root.iterdir():
        found = _BUILDING.fullmatch(path.name)
        if found and found["host"] == host and not process_alive(int(found["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            log.info("prepared data: removed %s, left by process %s, which is gone", path.name, found["pid"])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ---------------------------------------------------------------- step 1: read, clean, dedup


@dataclass
class Outcome:
    """What a worker learned about one document."""

    doc: Document  # with the cleaned text
    raw_bytes: int
    changes: dict[str, int]  # transform -> characters removed
    failed: tuple[str, float] | None  # the filter it failed, and the value
    exact: bytes | None = None
    spans: tuple | None = None  # line and paragraph hashes (spans.span_hashes)
    signature: np.ndarray | None = None
    ngrams: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class DocumentProcessor:
    """The per-document work that runs in the worker processes: clean, filter, hash.

    Without line/paragraph dedup one call does it all (`__call__`). With it, the work comes in
    two halves around the main process's decision of what to cut: `clean_batch` (clean, filter,
    exact key, line and paragraph hashes), then `hash_batch` on the cut texts (MinHash, n-grams)."""

    def __init__(self, data: DataConfig):
        self.clean_config, self.exact, self.dedup = data.clean, data.dedup.exact, data.dedup
        self.near = data.dedup.near if data.dedup.near.enabled else None
        self.signer = Signer(self.near.num_perm, self.near.seed) if self.near else None
        wants_ngrams = data.leakage.enabled or data.split.containment is not None or data.decontaminate
        self.leakage_ngram = data.leakage.ngram if wants_ngrams else None

    def __call__(self, batch: list[Document]) -> list[Outcome]:
        return [self.process(doc) for doc in batch]

    def clean_batch(self, batch: list[Document]) -> list[Outcome]:
        return [self.process(doc, hashes=False) for doc in batch]

    def hash_batch(self, texts: list[str]) -> list[tuple]:
        out = []
        for text in texts:
            clock = Clock()
            signature, grams = self.hashes(text, clock)
            out.append((signature, grams, clock.seconds))
        return out

    def process(self, doc: Document, hashes: bool = True) -> Outcome:
        clock = Clock()
        raw_bytes = len(doc.text.encode("utf-8"))
        text, changes = clean.transform(doc.text, self.clean_config)
        failed = clean.failed_filter(text, self.clean_config)
        clock.lap("clean")
        out = Outcome(replace(doc, text=text), raw_bytes, changes, failed)
        if failed:
            out.seconds = clock.seconds
            return out
        if self.exact:
            out.exact = exact_key(text)
            clock.lap("exact_dedup")
        if hashes:
            out.signature, out.ngrams = self.hashes(text, clock)
        else:
            out.spans = span_hashes(text, self.dedup.min_line_chars, self.dedup.lines, self.dedup.paragraphs)
            clock.lap("line_dedup")
        out.seconds = clock.seconds
        return out

    def hashes(self, text: str, clock: Clock) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The MinHash signature and the word n-gram hashes (each None when not wanted)."""
        signature = grams = None
        words = ngrams.word_units(text) if self.leakage_ngram or (self.near and self.near.unit == "word") else None
        if self.near:
            units = words if self.near.unit == "word" else ngrams.char_units(text)
            signature = self.signer.signature(ngrams.ngram_hashes(units, self.near.ngram))
            clock.lap("near_dedup")
        if self.leakage_ngram:
            grams = ngrams.ngram_hashes(words, self.leakage_ngram) if len(words) >= self.leakage_ngram \
                else np.empty(0, dtype=np.uint64)
            clock.lap("leakage")
        return signature, grams


def unique_ids(docs: Iterable[Document], prefix: bool, renamed: list[str]) -> Iterator[Document]:
    """Ids must be unique in documents.jsonl: prefix them with the source in a mixture, and give
    a repeated id a `#2`, `#3` suffix (listed in `renamed`)."""
    seen: set[str] = set()
    for doc in docs:
        if prefix:
            doc.id = f"{doc.source}/{doc.id}"
        if doc.id in seen:
            n = 2
            while f"{doc.id}#{n}" in seen:
                n += 1
            renamed.append(doc.id)
            doc.id = f"{doc.id}#{n}"
        seen.add(doc.id)
        yield doc


def read_clean_dedup(data: DataConfig, spool: Path, clock: Clock
                     ) -> tuple[Corpus, NearDuplicates | None, NgramSample | None, dict, dict]:
    """Step 1, streaming: every document is read, cleaned, filtered, hashed, and dropped if its
    text was seen before; lines and paragraphs an earlier document held are cut out, and so is
    evaluation text (data.decontaminate); the kept documents go to the spool. Returns the corpus,
    the near-duplicate signatures, the n-gram sample, and the report's `read` and `clean` sections."""
    sources = data.sources()
    skipped, renamed = Skipped(), []
    docs = unique_ids(itertools.chain.from_iterable(read_source(name, source, skipped, data.max_document_chars)
                                                    for name, source in sources.items()),
                      prefix=len(sources) > 1, renamed=renamed)
    sizes = [input_bytes(source) for source in sources.values()]
    corpus = Corpus(spool)
    near = NearDuplicates(data.dedup.near) if data.dedup.near.enabled else None
    wants_sample = data.leakage.enabled or data.split.containment is not None
    sample = NgramSample(data.leakage.max_hashes) if wants_sample else None
    spans = SpanDeduper(min_chars=data.dedup.min_line_chars, max_hashes=data.dedup.max_hashes) \
        if data.dedup.lines or data.dedup.paragraphs else None
    evals = EvalNgrams(data.decontaminate, data.leakage.ngram) if data.decontaminate else None
    processor = DocumentProcessor(data)
    read = {name: {"documents": 0, "bytes": 0} for name in sources}
    long_documents = {"max_document_chars": data.max_document_chars, "documents": 0, "pieces": 0, "examples": []}
    changed = {name: {"documents": 0, "chars_removed": 0} for name in clean.TRANSFORMS if getattr(data.clean, name)}
    dropped: dict[str, dict] = {}  # reason -> count and the first examples

    def drop(reason: str, example: dict) -> None:
        entry = dropped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 20:
            entry["examples"].append(example)

    def too_little(text: str) -> tuple[str, float] | None:
        return clean.failed_filter(text, data.clean) or (None if text.strip() else ("empty", 0))

    first_of: dict[bytes, str] = {}
    bar = tqdm(total=None if None in sizes else sum(sizes), unit="B", unit_scale=True, desc="clean+dedup",
               disable=None, file=sys.stderr)

    def first_pass(batches: Iterable[list[Outcome]]) -> Iterator[list[Outcome]]:
        """Count, filter, drop exact copies and cut repeated lines, in corpus order."""
        for outcomes in batches:
            kept = []
            for out in outcomes:
                doc = out.doc
                clock.add(out.seconds)
                read[doc.source]["documents"] += 1
                read[doc.source]["bytes"] += out.raw_bytes
                bar.update(out.raw_bytes)
                if doc.part:
                    long_documents["pieces"] += 1
                    if doc.part == 1:
                        long_documents["documents"] += 1
                        if len(long_documents["examples"]) < 20:
                            long_documents["examples"].append(doc.origin)
                for name, removed in out.changes.items():
                    changed[name]["documents"] += 1
                    changed[name]["chars_removed"] += removed
                if out.failed:
                    drop(out.failed[0], {"id": doc.id, "value": out.failed[1]})
                    continue
                if out.exact is not None and out.exact in first_of:
                    drop("exact_duplicate", {"id": doc.id, "of": first_of[out.exact]})
                    continue
                if spans:
                    text, commit = spans.apply(doc.id, doc.text, out.spans)
                    if text is not doc.text:
                        failed = too_little(text)
                        if failed:  # its lines are not remembered: the next document holding them keeps them
                            drop("repeated_lines", {"id": doc.id, "value": f"{failed[0]} {failed[1]} after the cut"})
                            continue
                        doc.text = text
                    spans.commit(commit)
                if out.exact is not None:
                    first_of[out.exact] = doc.id
                kept.append(out)
            if kept:
                yield kept

    def keep(out: Outcome) -> None:
        doc = out.doc
        if evals and evals.matches(out.ngrams):
            doc.text = evals.scrub(doc.id, doc.text)
            failed = too_little(doc.text)
            if failed:
                evals.counts["documents_dropped"] += 1
                drop("decontaminated", {"id": doc.id, "value": f"{failed[0]} {failed[1]} after the cut"})
                return
            out.signature, out.ngrams = processor.hashes(doc.text, Clock())
        index = corpus.add(doc)
        if near:
            near.add(index, out.signature)
        if sample:
            sample.add(out.ngrams)

    with worker_pool(data.workers) as run:
        batches = in_batches(docs, lambda d: len(d.text), _BATCH_BYTES)
        if spans:  # workers clean and hash lines; this process cuts; workers hash what is left
            waiting: deque[list[Outcome]] = deque()

            def cut_texts() -> Iterator[list[str]]:
                for kept in first_pass(run(processor.clean_batch, batches)):
                    waiting.append(kept)
                    yield [out.doc.text for out in kept]

            for hashed in run(processor.hash_batch, cut_texts()):
                for out, (out.signature, out.ngrams, seconds) in zip(waiting.popleft(), hashed):
                    clock.add(seconds)
                    keep(out)
        else:
            for kept in first_pass(run(processor, batches)):
                for out in kept:
                    keep(out)
    bar.close()
    corpus.done_adding()
    skipped.warn()
    if renamed:
        log.warning("renamed %d repeated document id(s) with a #n suffix: %s", len(renamed), ", ".join(renamed[:3]))
    if long_documents["documents"]:
        log.warning("cut %d document(s) longer than data.max_document_chars=%d into %d pieces: %s",
                    long_documents["documents"], data.max_document_chars, long_documents["pieces"],
                    ", ".join(long_documents["examples"][:3]))
    for reason, entry in dropped.items():
        log.info("dropped %d document(s): %s", entry["count"], reason)
    if not corpus.docs:
        reasons = [f"{v['count']} {k}" for k, v in skipped.summary().items()] + \
                  [f"{v['count']} dropped by {k}" for k, v in dropped.items()]
        raise UserError(f"no usable documents in data '{data.name}'"
                        + (f" ({', '.join(reasons)})" if reasons else " (the sources are empty)")
                        + ": check data paths/fields and the data.clean filters")
    read_section = {"sources": read, "skipped": skipped.summary(), "renamed_ids": renamed[:20],
                    "long_documents": long_documents}
    clean_section = {"changed": changed, "dropped": dropped, "kept": len(corpus.docs)}
    if spans:
        clean_section["repeated_lines"] = spans.report(data.dedup)
        log.info("line/paragraph dedup: cut %s lines and %s paragraphs (%s characters) from %s documents",
                 f"{spans.counts['lines_removed']:,}", f"{spans.counts['paragraphs_removed']:,}",
                 f"{spans.counts['chars_removed']:,}", f"{spans.counts['documents_changed']:,}")
        if spans.seen.refused:
            log.warning("line/paragraph dedup: data.dedup.max_hashes=%d reached; %d later lines were only checked",
                        data.dedup.max_hashes, spans.seen.refused)
    if evals:
        clean_section["decontaminated"] = evals.report()
        log.info("decontaminate: cut %s lines (%s characters) from %s documents, dropped %s, against %d file(s)",
                 f"{evals.counts['lines_removed']:,}", f"{evals.counts['chars_removed']:,}",
                 f"{evals.counts['documents_changed']:,}", f"{evals.counts['documents_dropped']:,}", len(evals.files))
    return corpus, near, sample, read_section, clean_section


# ---------------------------------------------------------------- step 2: near-duplicates, split, leakage


def near_duplicate_clusters(corpus: Corpus, sample: NgramSample | None, near: NearDuplicates
                            ) -> tuple[list[tuple[int, int]], list[dict], dict, dict | None]:
    """Find the clusters; with `action: drop`, keep each cluster's first document only. Returns
    the pairs that must share a split, the clusters (their ids), the report's `near_duplicates`
    section, and with `action: drop` the dropped documents' entry."""
    pairs = near.pairs()
    clusters = [members for members in labels_to_groups(components(len(corpus.docs), [(a, b) for a, b, _ in pairs]))
                if len(members) > 1]
    best = {}
    for a, b, similarity in pairs:
        best[a], best[b] = max(best.get(a, 0), similarity), max(best.get(b, 0), similarity)
    clusters.sort(key=lambda c: (-len(c), -sum(corpus.chars[i] for i in c), c[0]))
    listed = [{"documents": [corpus.docs[i].id for i in c], "max_jaccard": max(best[i] for i in c)} for c in clusters]
    section = {"config": asdict(near.config), "clusters": len(clusters),
               "documents_in_clusters": sum(len(c) for c in clusters), "largest": listed[:50]}
    log.info("near-duplicates: %d cluster(s) of %d documents (threshold %.2f, %s %d-grams)", len(clusters),
             section["documents_in_clusters"], near.config.threshold, near.config.unit, near.config.ngram)
    if near.config.action == "group" or not clusters:
        return [(a, b) for a, b, _ in pairs], listed, section, None
    extra = {i: c[0] for c in clusters for i in c[1:]}
    dropped = [{"id": corpus.docs[i].id, "of": corpus.docs[first].id, "jaccard": best[i]} for i, first in extra.items()]
    kept = [i for i in range(len(corpus.docs)) if i not in extra]
    corpus.keep(kept)
    if sample:
        sample.keep(kept)
    log.info("dropped %d near-duplicate document(s), kept the first of each cluster", len(dropped))
    return [], listed, section, {"count": len(dropped), "examples": dropped[:20]}


def split_corpus(corpus: Corpus, pairs: list[tuple[int, int]], config: SplitConfig
                 ) -> tuple[list[str], list[str | None], dict]:
    """The split of each kept document, each document's stratum, and the report's `split` section."""
    for key in (config.group_by, config.stratify_by):
        if key and key not in ("id", "source") and not any(key in d.meta for d in corpus.docs):
            known = sorted({k for d in corpus.docs[:1000] for k in d.meta})
            raise UserError(f"data.split: no document has the metadata field {key!r}; "
                            f"fields: {', '.join(known) or 'none'} (or use id, source, null)")
    split_of, strata, groups = split_of_documents(corpus.docs, corpus.chars, config, pairs)
    for name in SPLITS:
        if name not in split_of and (name == "train" or getattr(config, name) > 0):
            raise UserError(f"the {name} split is empty: the corpus has too few groups "
                            f"({len(set(groups.tolist()))}) for val={config.val} test={config.test}")
    summary = {}
    for name in SPLITS:
        members = [i for i, s in enumerate(split_of) if s == name]
        info = {"documents": len(members), "groups": len({int(groups[i]) for i in members}),
                "chars": sum(corpus.chars[i] for i in members)}
        if config.stratify_by:
            by: dict[str, int] = {}
            for i in members:
                stratum = strata[i] or MISSING
                by[stratum] = by.get(stratum, 0) + corpus.chars[i]
            info["chars_by_stratum"] = dict(sorted(by.items()))
        summary[name] = info
    for name, info in summary.items():
        log.info("split %-5s %6s documents %12s chars", name, f"{info['documents']:,}", f"{info['chars']:,}")
    return split_of, strata, {"group_by": config.group_by, "stratify_by": config.stratify_by,
                              "groups": len(set(groups.tolist())), "splits": summary}


def leakage_report(sample: NgramSample, corpus: Corpus, split_of: list[str], strata: list, data: DataConfig) -> dict:
    ids = [d.id for d in corpus.docs]
    out = {"ngram": data.leakage.ngram, "unit": "word", "sample_rate": sample.rate,
           "grouped": sample.leakage(split_of, ids)}
    if data.leakage.compare_ungrouped:
        one_by_one = assign_splits(ids, corpus.chars, strata, np.arange(len(ids)), data.split)
        out["ungrouped"] = sample.leakage(one_by_one, ids)
    log.info("leakage: %.2f%% of val and %.2f%% of test word %d-grams occur in train",
             100 * out["grouped"]["val"]["share"], 100 * out["grouped"]["test"]["share"], data.leakage.ngram)
    return out


def containment_max_docs(n_docs: int) -> int:
    """An n-gram held by more documents than this (1% of them, 16 to 64) is a template, not kinship
    (dedup.containment_pairs); 64 bounds the pairs one n-gram adds (2,016)."""
    return min(64, max(16, n_docs // 100))


def containment_groups(corpus: Corpus, sample: NgramSample, data: DataConfig) -> tuple[list[tuple[int, int]], dict]:
    """The pairs of documents that share at least data.split.containment of their n-grams, and the
    report's `containment` section."""
    threshold, max_docs = data.split.containment, containment_max_docs(len(corpus.docs))
    found = containment_pairs(sample.per_doc, threshold, max_docs)
    pairs = [(a, b) for a, b, _ in found]
    groups = [g for g in labels_to_groups(components(len(corpus.docs), pairs)) if len(g) > 1]
    groups.sort(key=lambda g: (-len(g), g[0]))
    ids = [d.id for d in corpus.docs]
    strongest = sorted(found, key=lambda p: (-p[2], p[0], p[1]))[:20]
    section = {"threshold": threshold, "ngram": data.leakage.ngram, "sample_rate": sample.rate,
               "template_docs": max_docs, "pairs": len(found), "groups": len(groups),
               "documents_in_groups": sum(len(g) for g in groups),
               "largest": [{"size": len(g), "documents": [ids[i] for i in g[:8]]} for g in groups[:20]],
               "strongest": [{"a": ids[a], "b": ids[b], "share": share} for a, b, share in strongest]}
    log.info("containment: %d pair(s) sharing >= %.0f%% of their word %d-grams, %d group(s) of %d documents",
             len(found), 100 * threshold, data.leakage.ngram, len(groups), section["documents_in_groups"])
    return pairs, section


def leakage_gate(leak: dict, data: DataConfig, corpus: Corpus, sample: NgramSample,
                 near_pairs: list[tuple[int, int]]) -> dict:
    """Past data.split.max_leakage, one warning line (or, with on_leak=error, a UserError) naming
    the worst documents and a setting that fixes it: a lower data.split.containment is tried on the
    spot (split and leakage again, on the same n-grams), the other fixes are named."""
    limit = data.split.max_leakage
    shares = {split: leak["grouped"][split]["share"] for split in ("val", "test")}
    split = max(shares, key=shares.__getitem__)
    gate = {"max_leakage": limit, "on_leak": data.split.on_leak, "split": split, "share": shares[split],
            "passed": shares[split] <= limit}
    if gate["passed"]:
        return gate
    worst = sorted(((w["share"], w["id"], s) for s in ("val", "test") for w in leak["grouped"][s]["worst"]
                    if w["share"] > 0), reverse=True)[:3]
    fixes = []
    if not (data.dedup.lines and data.dedup.paragraphs):
        fixes.append("data.dedup.lines=true data.dedup.paragraphs=true (cut repeated templates)")
    current = data.split.containment or 1.0
    tried = [c for c in (0.3, 0.2, 0.1, 0.05) if c < current]
    if tried:
        candidates = containment_pairs(sample.per_doc, min(tried), containment_max_docs(len(corpus.docs)))
        ids = [d.id for d in corpus.docs]
        for threshold in tried:
            extra = [(a, b) for a, b, share in candidates if share >= threshold]
            split_of, _, _ = split_of_documents(corpus.docs, corpus.chars, data.split, list(near_pairs) + extra)
            if not all(s in split_of for s in SPLITS if s == "train" or getattr(data.split, s) > 0):
                break  # lower thresholds only make fewer, larger groups
            again = sample.leakage(split_of, ids)
            worst_again = max(again[s]["share"] for s in ("val", "test"))
            if worst_again <= limit:
                fixes.append(f"data.split.containment={threshold} (measured: {100 * worst_again:.2f}%)")
                break
    if not fixes:
        fixes.append("group related documents with data.split.group_by=<field>")
    fixes.append(f"or accept it: data.split.max_leakage={np.ceil(100 * shares[split]) / 100:.2f}")
    gate["message"] = (f"leakage: {100 * shares[split]:.2f}% of {split} word {data.leakage.ngram}-grams occur in train, "
                       f"over data.split.max_leakage={limit}; most leaked: "
                       + ", ".join(f"{i} ({s}, {100 * share:.0f}%)" for share, i, s in worst)
                       + "; fix: " + "; ".join(fixes))
    if data.split.on_leak == "error":
        raise UserError(gate["message"])
    log.warning(gate["message"])
    return gate


# ---------------------------------------------------------------- the whole build


def build(data: DataConfig, tok_config: TokenizerConfig, out: Path, *, tokenizer_json: str | None = None) -> None:
    """Every step in order into the folder `out`; the report is assembled from what each returns."""
    started = time.perf_counter()
    tok_section = asdict(tok_config) if tokenizer_json is None else \
        {"given_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest()}
    report: dict = {"name": data.name, "config": {"data": asdict(data), "tokenizer": tok_section},
                    "pipeline_version": PIPELINE_VERSION}
    clock, wall = Clock(), {}

    corpus, near, sample, report["read"], report["clean"] = read_clean_dedup(data, out / "texts.spool", clock)
    wall["read_clean_dedup"] = time.perf_counter() - started
    raw_bytes = sum(s["bytes"] for s in report["read"]["sources"].values())
    n_read = sum(s["documents"] for s in report["read"]["sources"].values())
    log.info("read %s documents (%.1f MB), kept %s in %.1f s", f"{n_read:,}", raw_bytes / 1e6, f"{len(corpus.docs):,}",
             wall["read_clean_dedup"])

    t = time.perf_counter()
    pairs, clusters = [], []
    if near:
        pairs, clusters, report["near_duplicates"], dropped = near_duplicate_clusters(corpus, sample, near)
        if dropped:
            report["clean"]["dropped"]["near_duplicate"] = dropped
            report["clean"]["kept"] = len(corpus.docs)
    wall["near_dedup_index"] = time.perf_counter() - t

    t = time.perf_counter()
    contained = []
    if sample and data.split.containment is not None:
        contained, report["containment"] = containment_groups(corpus, sample, data)
    split_of, strata, report["split"] = split_corpus(corpus, pairs + contained, data.split)
    if near:
        split_by_id = {d.id: split for d, split in zip(corpus.docs, split_of)}
        for cluster in clusters:
            cluster["splits"] = sorted({split_by_id.get(i, "dropped") for i in cluster["documents"]})
        report["near_duplicates"]["straddling_splits"] = sum(len(set(c["splits"]) - {"dropped"}) > 1 for c in clusters)
    if sample and data.leakage.enabled:
        report["leakage"] = leakage_report(sample, corpus, split_of, strata, data)
        if data.split.max_leakage is not None:
            report["leakage"]["gate"] = leakage_gate(report["leakage"], data, corpus, sample, near_pairs=pairs)
    wall["split_and_leakage"] = time.perf_counter() - t

    t = time.perf_counter()
    train = [i for i, s in enumerate(split_of) if s == "train"]
    if tokenizer_json is None:
        tokenizer = train_tokenizer(tok_config, corpus.texts(train))
        kind, specials = tok_config.kind, tok_config.special_tokens()
    else:
        tokenizer = Tokenizer.from_str(tokenizer_json)
        kind = f"given ({type(tokenizer.model).__name__}, sha256 {hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]})"
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
    if tokenizer_json is None:
        tokenizer.save(str(out / "tokenizer.json"))
    else:  # byte for byte: its hash is how checkpoints and model folders recognise it
        (out / "tokenizer.json").write_text(tokenizer_json)
    wall["train_tokenizer"] = time.perf_counter() - t
    log.info("tokenizer: %s, %d tokens, %s %d train documents in %.1f s", kind, tokenizer.get_vocab_size(),
             "trained on" if tokenizer_json is None else "not trained: encodes", len(train), wall["train_tokenizer"])

    t = time.perf_counter()
    weights = {name: source.weight for name, source in data.sources().items()}
    meta_splits, token_report = write_shards(corpus, split_of, weights, data.split.seed, tokenizer, out, clock)
    wall["write_shards"] = time.perf_counter() - t
    corpus.remove()

    specials = {token: tokenizer.token_to_id(token) for token in specials}
    report["tokenizer"] = {"kind": kind, "vocab_size": tokenizer.get_vocab_size(),
                           "special_tokens": specials, **token_report}
    wall["total"] = time.perf_counter() - started
    report["seconds"] = {"wall": {k: round(v, 3) for k, v in wall.items()},
                         "worker_cpu": {k: round(v, 3) for k, v in clock.seconds.items()}}
    report["throughput_mb_s"] = {k: round(raw_bytes / 1e6 / v, 2) for k, v in
                                 {**clock.seconds, "end_to_end": wall["total"]}.items() if v > 0}
    meta = {"name": data.name, "vocab_size": tokenizer.get_vocab_size(), "dtype": token_report["dtype"],
            "eot_id": token_report["eot_id"], "tokenizer": kind, "special_tokens": specials,
            "pipeline_version": PIPELINE_VERSION, "splits": meta_splits}
    write_report(out, report, lengths={s: [corpus.chars[i] for i, x in enumerate(split_of) if x == s] for s in SPLITS})
    write_json(out / "meta.json", meta)
