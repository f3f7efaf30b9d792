"""`llm compare`: one Markdown table of several runs, one row per run, with a column for each
setting that differs between them, and the pictures that go with it (compare/loss.png, every
run's loss curves on one set of axes, and a setting against the final val loss).

A run is a training run dir (run.json), its eval/ folder (metrics.json), or a multirun/sweep folder
(its numbered or trials/ run dirs). A run with no eval is compared on the metrics its training
recorded in run.json, and the rows that did are named below the table. Files and folders a
wildcard catches that are not runs (multirun.yaml, a study's report) are skipped and named."""

from __future__ import annotations

import csv
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lightning_llm.artifacts import pyplot, save_figure, write_text
from lightning_llm.errors import UserError
from lightning_llm.evaluation.report import table, with_ci

COLUMNS = {"val/bpb": "val bpb", "test/bpb": "test bpb", "ngram/test/bpb": "n-gram test bpb",
           "test/ppl": "test ppl", "test/acc": "test acc", "gen/bleu": "BLEU", "ngram/gen/bleu": "n-gram BLEU",
           "gen/rougeL": "ROUGE-L", "gen/distinct_2": "distinct-2",
           "classify/test/f1_macro/pretrained": "F1 pretrained", "classify/test/f1_macro/scratch": "F1 random init"}
# What the training run measured itself (run.json's metrics), shown for every run that has them.
TRAINING_COLUMNS = {"best_val/loss": "train-time best val loss", "val/bpb": "train-time val bpb"}
# Eval settings that do not change a metric: where the model or the report lives, the device, the batch.
NEUTRAL_EVAL_SETTINGS = ("ckpt", "out_dir", "data_dir", "device", "batch_size", "tasks")
# Config keys that differ between any two runs without meaning anything: where each run writes.
NEUTRAL_RUN_KEYS = ("paths.", "hydra.", "ckpt_path", "experiment_name", "tags", "allow_targets")
MAX_SETTING_COLUMNS = 8
# The metric runs are told apart on, the first that every evaluated run has a 95% interval for
# (metrics.json's `intervals`, written by `llm eval`).
HEADLINE_METRICS = {"test/bpb": "test bpb", "val/bpb": "val bpb", "gen/bleu": "BLEU", "gen/rougeL": "ROUGE-L"}


@dataclass
class Run:
    path: Path                  # as given (or found by a wildcard)
    run_dir: Path | None        # the training run dir, where run.json, metrics.csv and .hydra/ live
    record: dict                # run.json, or {}
    results: dict | None        # eval/metrics.json, or None: compared on run.json's metrics
    settings: dict = field(default_factory=dict)   # flat config keys -> values, for the differing columns

    @property
    def name(self) -> str:
        return str(self.path)


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file()
                                 for name in ("run.json", "metrics.json", "eval/metrics.json"))


def runs_inside(folder: Path) -> list[Path]:
    """The run dirs of a multirun folder (0/, 1/, ...) or of a sweep's study folder (trials/N/)."""
    found = [p for p in folder.iterdir() if p.is_dir() and is_run(p)]
    if (folder / "trials").is_dir():
        found += [p for p in (folder / "trials").iterdir() if is_run(p)]
    return sorted(found, key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else math.inf, p.name))


def expand(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Run dirs as given, wildcards expanded and multirun folders opened (in order, without repeats),
    and a note for each thing a wildcard caught that is not a run."""
    runs: list[Path] = []
    skipped: list[str] = []
    for pattern in patterns:
        magic = glob.has_magic(pattern)
        found = sorted(glob.glob(pattern)) if magic else [pattern]
        if not found:
            raise UserError(f"runs: nothing matches {pattern!r}")
        for text in found:
            path = Path(text)
            if not path.exists():
                raise UserError(f"runs: {path} does not exist: pass training run dirs, eval folders or a multirun dir")
            inside = runs_inside(path) if path.is_dir() and not is_run(path) else []
            if is_run(path):
                candidates = [path]
            elif inside:
                candidates = inside
            elif magic:
                skipped.append(f"{path} ({'a file' if path.is_file() else 'a folder'} with no run.json or "
                               "eval/metrics.json)")
                continue
            else:
                raise UserError(f"runs: {path} is not a run: it holds no run.json or eval/metrics.json, and no run "
                                "dirs (a multirun's 0/, 1/, ... or a sweep's trials/)")
            runs += [p for p in candidates if p not in runs]
    if not runs:
        raise UserError(f"runs: none of {patterns} is a run (skipped: {', '.join(skipped)})")
    return runs, skipped


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


def load(path: Path) -> Run:
    """A run's eval results (None without an eval) and its training record ({} without one)."""
    metrics = next((p for p in (path / "metrics.json", path / "eval" / "metrics.json") if p.is_file()), None)
    results = read_json(metrics, f"llm eval ckpt={path}") if metrics else None
    if results is not None:
        run_dir = Path(results.get("run_dir") or metrics.parent.parent)
    else:
        run_dir = path
    record_path = run_dir / "run.json"
    record = read_json(record_path, f"the run in {run_dir}") if record_path.is_file() else {}
    run = Run(path, run_dir if record_path.is_file() else None, record, results)
    run.settings = run_settings(run)
    return run


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): json.dumps(value) if isinstance(value, (list, dict)) else value}


def command_line_overrides(run_dir: Path | None) -> dict:
    """key -> value of the overrides the run was started with (.hydra/overrides.yaml), or {}."""
    if run_dir is None or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        return {}
    import yaml

    try:
        lines = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except yaml.YAMLError:
        return {}
    pairs = [str(line).lstrip("+~").split("=", 1) for line in lines if "=" in str(line)]
    return {key: value for key, value in pairs if not key.startswith("hydra.")}


def run_settings(run: Run) -> dict:
    """The run's config as flat keys (run.json records the whole config it ran), plus the config
    groups chosen on its command line (model=gpt-nano). Keys that name the run's own files are left out."""
    config = run.record.get("overrides") or {}
    own = str(run.run_dir.resolve()) if run.run_dir else None
    settings = {key: value for key, value in flatten(config).items()
                if not key.startswith(NEUTRAL_RUN_KEYS)
                and not (own and isinstance(value, str) and (own in value or str(run.run_dir) in value))}
    for key, value in command_line_overrides(run.run_dir).items():
        if "." not in key:  # a config group choice; its leaves are shown through it
            settings[key] = value
    return settings


def differing_settings(runs: list[Run]) -> list[str]:
    """The config keys whose value is not the same in every run, a chosen group before its leaves."""
    keys = sorted({key for run in runs for key in run.settings})
    differ = [key for key in keys if len({repr(run.settings.get(key)) for run in runs}) > 1]
    groups = [key for key in differ if "." not in key and any(k.startswith(f"{key}.") for k in differ)]
    typed = {key for run in runs for key in command_line_overrides(run.run_dir)}
    return [key for key in differ
            if not any(key.startswith(f"{group}.") for group in groups) or key in typed]


def differing_eval_settings(runs: list[Run]) -> dict[str, list]:
    """Eval settings (lm.max_tokens, generation.passages...) that differ between the evaluated runs:
    their metrics were measured on different terms and do not compare."""
    evaluated = [run for run in runs if run.results is not None]
    flat = [{k: v for k, v in flatten(run.results.get("config") or {}).items()
             if not k.startswith(NEUTRAL_EVAL_SETTINGS)} for run in evaluated]
    keys = sorted({key for settings in flat for key in settings})
    return {key: [settings.get(key) for settings in flat] for key in keys
            if len({repr(settings.get(key)) for settings in flat}) > 1}


def cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else value


def final_val_loss(run: Run) -> float | None:
    metrics = run.record.get("metrics") or {}
    value = metrics.get("best_val/loss", metrics.get("val/loss"))
    return float(value) if isinstance(value, (int, float)) else None


def interval(run: Run, key: str) -> list[float] | None:
    ci = ((run.results or {}).get("intervals") or {}).get(f"{key}_ci")
    return [float(ci[0]), float(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None


def indistinguishable(runs: list[Run]) -> tuple[str | None, list[tuple[Run, Run]]]:
    """The headline metric every evaluated run has an interval for (None if fewer than two runs do),
    and the pairs of runs whose 95% intervals on it overlap: their difference is within the noise."""
    evaluated = [run for run in runs if run.results is not None]
    if len(evaluated) < 2:
        return None, []
    key = next((k for k in HEADLINE_METRICS if all(interval(run, k) for run in evaluated)), None)
    if key is None:
        return None, []
    pairs = [(a, b) for i, a in enumerate(evaluated) for b in evaluated[i + 1:]
             if interval(a, key)[0] <= interval(b, key)[1] and interval(b, key)[0] <= interval(a, key)[1]]
    return key, pairs


def compare_markdown(runs: list[Run], *, skipped: list[str] = ()) -> str:
    """The table, then the notes: rows without an eval, evals on different terms, what was skipped."""
    columns = [key for key in COLUMNS if any(key in (run.results or {}).get("headline", {}) for run in runs)]
    training = [key for key in TRAINING_COLUMNS if any(key in (run.record.get("metrics") or {}) for run in runs)]
    settings = differing_settings(runs)
    shown, hidden = settings[:MAX_SETTING_COLUMNS], settings[MAX_SETTING_COLUMNS:]
    headline_key, same = indistinguishable(runs)
    rows = []
    for run in runs:
        results = run.results or {}
        model = results.get("model") or run.record.get("model") or {}
        tokenizer = results.get("tokenizer") or (run.record.get("data") or {}).get("tokenizer", {})
        if isinstance(tokenizer, dict):
            tokenizer = tokenizer.get("type") or tokenizer.get("kind")
        metrics = run.record.get("metrics") or {}
        params = model.get("parameters")
        rows.append([run.name, run.record.get("experiment", "–"), tokenizer or "–",
                     f"{params / 1e6:.2f}M" if params else "–", run.record.get("steps"),
                     *[cell(run.settings.get(key)) for key in shown],
                     *[metrics.get(key) for key in training],
                     *[with_ci(results.get("headline", {}).get(key), interval(run, key)) if key == headline_key
                       else results.get("headline", {}).get(key) for key in columns],
                     "eval" if run.results is not None else "run.json"])
    text = table(["run", "experiment", "tokenizer", "params", "steps", *shown,
                  *[TRAINING_COLUMNS[k] for k in training], *[COLUMNS[k] for k in columns], "metrics from"], rows)
    notes = []
    no_eval = [run.name for run in runs if run.results is None]
    if no_eval:
        notes.append(f"- No eval, compared on the metrics training recorded in run.json: {', '.join(no_eval)} "
                     "(`llm eval ckpt=<run dir>` adds the test metrics).")
    evaluated = [run.name for run in runs if run.results is not None]
    for key, values in differing_eval_settings(runs).items():
        pairs = ", ".join(f"{name}: {json.dumps(value)}" for name, value in zip(evaluated, values))
        notes.append(f"- WARNING: evals made with different settings, their metrics do not compare: {key} ({pairs}).")
    if hidden:
        notes.append(f"- Also differ (not shown as columns): {', '.join(hidden)}.")
    if headline_key is not None:
        name = HEADLINE_METRICS[headline_key]
        if same:
            notes.append(f"- Indistinguishable on {name} (their 95% intervals overlap): "
                         + "; ".join(f"{a.name} and {b.name}" for a, b in same) + ".")
        else:
            notes.append(f"- Every evaluated run's 95% interval on {name} is disjoint from the others': "
                         "the differences are beyond the bootstrap noise.")
    if skipped:
        notes.append(f"- Skipped, not runs: {', '.join(skipped)}.")
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def read_losses(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return series
    with open(path) as f:
        for row in csv.DictReader(f):
            for name in ("train/loss", "val/loss"):
                if row.get(name) and row.get("step"):
                    steps, values = series.setdefault(name, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(row[name]))
    return series


def label(run: Run, settings: list[str]) -> str:
    values = ", ".join(f"{key.rsplit('.', 1)[-1]}={cell(run.settings.get(key))}" for key in settings[:3])
    return values or run.name


def draw_losses(runs: list[Run], settings: list[str], png: Path) -> bool:
    """Every run's val loss (markers) and train loss (thin, same colour) on one set of axes."""
    curves = [(run, read_losses(run.run_dir)) for run in runs if run.run_dir is not None]
    curves = [(run, series) for run, series in curves if series]
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, series) in enumerate(curves):
        colour = colours[i % len(colours)]
        if "train/loss" in series:
            ax.plot(*series["train/loss"], color=colour, linewidth=0.8, alpha=0.45)
        if "val/loss" in series:
            ax.plot(*series["val/loss"], color=colour, linewidth=2, marker="o", label=label(run, settings))
        elif "train/loss" in series:
            ax.plot([], [], color=colour, linewidth=2, label=label(run, settings))
    ax.set(xlabel="step", ylabel="loss (nats per token)",
           title=f"{len(curves)} runs: val loss (markers), train loss (thin)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, png, dpi=110, bbox_inches="tight")
    return True


def numeric(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def draw_setting(runs: list[Run], key: str, png: Path) -> bool:
    """One numeric setting against the final val loss, where it is the one setting the runs differ in."""
    points = sorted((numeric(run.settings.get(key)), final_val_loss(run)) for run in runs
                    if numeric(run.settings.get(key)) is not None and final_val_loss(run) is not None)
    if len({x for x, _ in points}) < 2:
        return False
    xs, ys = zip(*points)
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="final val loss (best)", title=f"{key} against the final val loss")
    ax.grid(alpha=0.3)
    save_figure(fig, png, dpi=110, bbox_inches="tight")
    return True


def compare(patterns: list[str], out: Path) -> str:
    """Write <out> (the table and notes) and, beside it, loss.png and <setting>_vs_val_loss.png."""
    if not patterns:
        raise UserError("runs is empty: pass runs=[<run dir>,<run dir>,...]")
    paths, skipped = expand(patterns)
    runs = [load(path) for path in paths]
    text = compare_markdown(runs, skipped=skipped)
    settings = differing_settings(runs)
    figures = []
    if draw_losses(runs, settings, out.parent / "loss.png"):
        figures.append("loss.png")
    numeric_settings = [key for key in settings
                        if all(numeric(run.settings.get(key)) is not None for run in runs)]
    if len(settings) == 1 and numeric_settings:
        name = f"{numeric_settings[0].replace('/', '_')}_vs_val_loss.png"
        if draw_setting(runs, numeric_settings[0], out.parent / name):
            figures.append(name)
    pictures = "".join(f"\n![{name}]({name})\n" for name in figures)
    write_text(out, "# Runs compared\n\n" + text + "\n" + pictures)
    return text + "".join(f"\nwrote {out.parent / name}" for name in figures)
