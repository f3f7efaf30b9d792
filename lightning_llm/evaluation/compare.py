"""One Markdown table of the headline metrics of several evaluated runs, one row per run."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from lightning_llm.artifacts import write_text
from lightning_llm.errors import UserError
from lightning_llm.evaluation.report import table

COLUMNS = {"val/bpb": "val bpb", "test/bpb": "test bpb", "ngram/test/bpb": "n-gram test bpb",
           "test/ppl": "test ppl", "test/acc": "test acc", "gen/bleu": "BLEU", "ngram/gen/bleu": "n-gram BLEU",
           "gen/rougeL": "ROUGE-L", "gen/distinct_2": "distinct-2",
           "classify/test/f1_macro/pretrained": "F1 pretrained", "classify/test/f1_macro/scratch": "F1 random init"}


def expand(patterns: list[str]) -> list[Path]:
    """Run dirs as given, with shell-style wildcards expanded (in order, without repeats)."""
    runs: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise UserError(f"runs: nothing matches {pattern!r}")
        runs += [Path(p) for p in found if Path(p) not in runs]
    return runs


def load(run: Path) -> tuple[dict, dict]:
    """(eval metrics, run record) of a run dir or of an eval folder."""
    metrics = next((p for p in (run / "metrics.json", run / "eval" / "metrics.json") if p.exists()), None)
    if metrics is None:
        raise UserError(f"runs: {run} has no eval/metrics.json: run `llm eval ckpt={run}` first")
    results = read_json(metrics, f"llm eval ckpt={run}")
    record_path = Path(results.get("run_dir") or metrics.parent.parent) / "run.json"
    return results, read_json(record_path, f"the run in {record_path.parent}") if record_path.exists() else {}


def read_json(path: Path, remedy: str) -> dict:
    """A JSON object from a file, or one line that says the file is broken and what rewrites it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"runs: {path} is empty, truncated or unreadable ({type(err).__name__}: {err}): "
                        f"re-run {remedy}") from None
    if not isinstance(value, dict):
        raise UserError(f"runs: {path} does not hold a JSON object: re-run {remedy}")
    return value


def compare_markdown(runs: list[Path]) -> str:
    loaded = [(run, *load(run)) for run in runs]
    columns = [key for key in COLUMNS if any(key in results.get("headline", {}) for _, results, _ in loaded)]
    rows = []
    for run, results, record in loaded:
        model = results.get("model", {})
        rows.append([str(run), record.get("experiment", "–"), results.get("tokenizer") or "–",
                     f"{model.get('parameters', 0) / 1e6:.2f}M", record.get("steps"),
                     *[results["headline"].get(key) for key in columns]])
    return table(["run", "experiment", "tokenizer", "params", "steps", *[COLUMNS[k] for k in columns]], rows)


def compare(patterns: list[str], out: Path) -> str:
    if not patterns:
        raise UserError("runs is empty: pass runs=[<run dir>,<run dir>,...]")
    text = compare_markdown(expand(patterns))
    write_text(out, "# Runs compared\n\n" + text + "\n")
    return text
