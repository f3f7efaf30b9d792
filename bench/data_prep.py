"""The corpus pipeline's speed and memory, through the real `llm prepare`, each run on a fresh cache.

    .venv/bin/python bench/data_prep.py default [--repeats 3]      # the built-in corpus, end to end
    .venv/bin/python bench/make_corpus.py /tmp/corpus_1g --gigabytes 1
    .venv/bin/python bench/data_prep.py jsonl /tmp/corpus_1g        # 1 GB: peak memory, MB/s per step
    .venv/bin/python bench/data_prep.py jaccard                     # why the default near-dup settings
    .venv/bin/python bench/data_prep.py default --repeats 5 --against data.dedup.lines=false \
        data.dedup.paragraphs=false data.split.containment=null     # A/B, interleaved: what a step costs
    .venv/bin/python bench/data_prep.py template --files 2000       # the template corpus: leakage and time
    .venv/bin/python bench/data_prep.py spans                       # the longest line repeated across texts

`default` and `jsonl` print the wall time of the command, the pipeline's own seconds and MB/s
of raw text per step (from report.json), and peak memory: the most the process tree held at
once (the sum of PSS over the main process and its workers, sampled every 0.1 s) and the
largest resident size of any single process (getrusage). `jaccard` measures the exact Jaccard
similarity of shingle sets between the two editions of each play and between different plays,
for several shingle choices.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LLM = [sys.executable, "-m", "lightning_llm.cli", "prepare"]


def tree_memory_mb(root: int) -> float:
    """Proportional set size (PSS) of a process and all its descendants, in MB: each page shared
    by n processes (a forked worker's copy of the parent) counts 1/n in each, so the sum is the
    memory the tree really holds."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(frontier)
    total_kb = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total_kb / 1024


def run_prepare(args: list[str], cache: Path) -> dict:
    """One `llm prepare` on an empty cache: wall seconds, peak tree memory, and its report."""
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(cache.parent), "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    process = subprocess.Popen(LLM + args + [f"paths.data_cache={cache}"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_memory_mb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode:
        sys.exit(f"llm prepare failed:\n{stderr[-3000:]}")
    folder = Path(stdout.strip().splitlines()[-1])
    return {"wall": wall, "peak_tree_mb": peak[0], "report": json.loads((folder / "report.json").read_text()),
            "log": stderr, "shards": {s: hashlib.sha256((folder / f"{s}.bin").read_bytes()).hexdigest()
                                      for s in ("train", "val", "test")}}


def largest_child_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux


def describe(result: dict) -> None:
    report = result["report"]
    raw_mb = sum(s["bytes"] for s in report["read"]["sources"].values()) / 1e6
    print(f"\nraw text {raw_mb:.1f} MB; kept {report['clean']['kept']:,} documents; "
          f"dropped {({k: v['count'] for k, v in report['clean']['dropped'].items()})}; "
          f"skipped {({k: v['count'] for k, v in report['read']['skipped'].items()})}")
    spans = report["clean"].get("repeated_lines")
    if spans:
        print(f"line/paragraph dedup: cut {spans['lines_removed']:,} lines and {spans['paragraphs_removed']:,} "
              f"paragraphs ({spans['chars_removed']:,} characters) from {spans['documents_changed']:,} documents")
    if "containment" in report:
        print(f"containment: {report['containment']['pairs']:,} pairs, {report['containment']['groups']:,} groups")
    if "near_duplicates" in report:
        print(f"near-duplicate clusters: {report['near_duplicates']['clusters']:,} "
              f"({report['near_duplicates']['documents_in_clusters']:,} documents)")
    if "leakage" in report:
        leak = report["leakage"]
        print("leakage (word %d-grams, sample rate %.4g): " % (leak["ngram"], leak["sample_rate"])
              + ", ".join(f"{s} {100 * leak['grouped'][s]['share']:.2f}%"
                          + (f" (ungrouped {100 * leak['ungrouped'][s]['share']:.2f}%)" if "ungrouped" in leak else "")
                          for s in ("val", "test")))
    print("\n| step | seconds | MB/s of raw text |\n|---|---|---|")
    for step, seconds in report["seconds"]["wall"].items():
        rate = f"{raw_mb / seconds:.1f}" if seconds else ""
        print(f"| {step} (wall) | {seconds:.2f} | {rate} |")
    for step, seconds in report["seconds"]["worker_cpu"].items():
        print(f"| {step} (CPU, per core) | {seconds:.2f} | {report['throughput_mb_s'].get(step, '')} |")


def bench_against(repeats: int, against: list[str]) -> None:
    """The built-in corpus with the defaults (A) and with `against` (B), runs interleaved A B A B..."""
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for _ in range(repeats):
        for name, args in (("A", []), ("B", against)):
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(run_prepare(args, Path(tmp) / "data"))
    print(f"B = {' '.join(against)}; {repeats} interleaved runs each, medians (report.json seconds)")
    print("| step | A: defaults | B | A / B |\n|---|---|---|---|")
    steps = list(runs["A"][0]["report"]["seconds"]["wall"])
    cpu = sorted({k for r in runs["A"] + runs["B"] for k in r["report"]["seconds"]["worker_cpu"]})
    for label, key, names in (("wall", "wall", steps), ("CPU", "worker_cpu", cpu)):
        for step in names:
            a = statistics.median(r["report"]["seconds"][key].get(step, 0.0) for r in runs["A"])
            b = statistics.median(r["report"]["seconds"][key].get(step, 0.0) for r in runs["B"])
            print(f"| {step} ({label}) | {a:.3f} | {b:.3f} | {a / b if b else float('nan'):.2f} |")
    same = {name: all(r["shards"] == runs["A"][0]["shards"] for r in rs) for name, rs in runs.items()}
    print(f"shards byte-identical to the first A run: A {same['A']}, B {same['B']}")


def bench_template(files: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_corpus import write_template_corpus

    with tempfile.TemporaryDirectory() as tmp:
        made = write_template_corpus(Path(tmp) / "files", files=files, seed=0)
        total = made["headers"] + made["own"] + made["licence"]
        print(f"{files} files, {total / 1e6:.1f} MB: licence {100 * made['licence'] / total:.0f}%, own text "
              f"{100 * made['own'] / total:.0f}%, {len(made['revisions'])} revisions")
        print("| settings | val leakage | test leakage | val+test share of kept characters | kept characters | "
              "pipeline seconds | gate |\n|---|---|---|---|---|---|---|")
        off = ["data.dedup.lines=false", "data.dedup.paragraphs=false", "data.split.containment=null"]
        for k, (name, extra) in enumerate((("defaults", []), ("lines, paragraphs and containment off", off),
                                           ("containment off", off[2:]), ("lines and paragraphs off", off[:2]))):
            result = run_prepare(["data=text_files", f"data.paths=[{tmp}/files]", "data.name=template"] + extra,
                                 Path(tmp) / f"run{k}" / "data")
            r = result["report"]
            chars = {k: v["chars"] for k, v in r["split"]["splits"].items()}
            leak = r["leakage"]["grouped"]
            print(f"| {name} | {100 * leak['val']['share']:.2f}% | {100 * leak['test']['share']:.2f}% | "
                  f"{100 * (chars['val'] + chars['test']) / sum(chars.values()):.1f}% | {sum(chars.values()):,} | "
                  f"{r['seconds']['wall']['total']:.2f} | {'passed' if r['leakage']['gate']['passed'] else 'warns'} |",
                  flush=True)


def bench_spans() -> None:
    """The longest normalised lines the built-in corpus repeats across texts: where min_line_chars must start."""
    from lightning_llm.data.clean import CleanConfig, transform
    from lightning_llm.data.shakespeare import read_shakespeare
    from lightning_llm.data.spans import normalised

    first: dict[str, str] = {}
    repeated = []
    for doc in read_shakespeare(["gutenberg", "folio"]):
        for line in transform(doc.text, CleanConfig())[0].split("\n"):
            key = normalised(line)
            if key and first.setdefault(key, doc.id) != doc.id:
                repeated.append((len(key), doc.id, first[key], key))
    repeated.sort(reverse=True)
    print("| characters | document | first in | line |\n|---|---|---|---|")
    for length, doc_id, source, key in repeated[:5]:
        print(f"| {length} | {doc_id} | {source} | {key} |")


def bench_default(repeats: int) -> None:
    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_prepare([], Path(tmp) / "data"))
    walls = [r["wall"] for r in results]
    builds = [r["report"]["seconds"]["wall"]["total"] for r in results]
    print(f"`llm prepare` on the built-in corpus, fresh cache, {repeats} runs: wall median "
          f"{statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); the pipeline itself "
          f"(report.json seconds.wall.total) median {statistics.median(builds):.1f} s; "
          f"peak memory of the process tree (PSS) {max(r['peak_tree_mb'] for r in results):.0f} MB; "
          f"largest process (max RSS) {largest_child_mb():.0f} MB")
    describe(results[len(results) // 2])


def bench_jsonl(path: Path, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        result = run_prepare(["data=jsonl", f"data.paths=[{path}]", "data.name=bench",
                              "data.split.group_by=author_group", "data.split.stratify_by=genre", *extra],
                             Path(tmp) / "data")
    print(" ".join(extra) or "defaults")
    print(f"`llm prepare data=jsonl` on {path}: wall {result['wall']:.0f} s; peak memory of the process tree "
          f"(PSS, main + workers) {result['peak_tree_mb']:.0f} MB; "
          f"largest process (max RSS) {largest_child_mb():.0f} MB")
    describe(result)


def bench_jaccard() -> None:
    from lightning_llm.data.clean import CleanConfig, transform
    from lightning_llm.data.ngrams import char_units, ngram_hashes, word_units
    from lightning_llm.data.shakespeare import read_shakespeare

    docs = [(d.id, d.meta["work"], transform(d.text, CleanConfig())[0])
            for d in read_shakespeare(["gutenberg", "folio"])]
    print("| shingles | two editions of a play: min / median | two different plays: max / 99th pct |\n|---|---|---|")
    for unit, n in (("word", 1), ("word", 2), ("word", 3), ("word", 5), ("char", 5), ("char", 9)):
        units = word_units if unit == "word" else char_units
        sets = {i: set(ngram_hashes(units(text), n).tolist()) for i, _, text in docs}
        same, other = [], []
        for (a, work_a, _), (b, work_b, _) in itertools.combinations(docs, 2):
            jaccard = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
            (same if work_a == work_b else other).append(jaccard)
        same.sort(), other.sort()
        print(f"| {unit} {n}-grams | {same[0]:.3f} / {statistics.median(same):.3f} | "
              f"{other[-1]:.3f} / {other[int(0.99 * len(other))]:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["default", "jsonl", "jaccard", "template", "spans"])
    parser.add_argument("path", nargs="?", type=Path, help="jsonl: a file, directory or glob of the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", nargs="+", default=None,
                        help="default: overrides to compare with, interleaved; jsonl: overrides for the run")
    parser.add_argument("--files", type=int, default=2000, help="template: how many files")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    if args.what == "default" and args.against:
        bench_against(args.repeats, args.against)
    elif args.what == "default":
        bench_default(args.repeats)
    elif args.what == "template":
        bench_template(args.files)
    elif args.what == "spans":
        bench_spans()
    elif args.what == "jsonl":
        bench_jsonl(args.path, args.against or [])
    else:
        bench_jaccard()


if __name__ == "__main__":
    main()
