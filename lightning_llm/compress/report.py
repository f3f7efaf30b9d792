"""compress/report.md: the compressed model against its original, one table, and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_llm.artifacts import markdown_table, staged_folder

SPEED = "tokens_per_s_b"  # + the batch size: one row per batch size measured (measure.batch_sizes)
ROWS = [("parameters", "parameters", "{:,}"), ("file_bytes", "file size (MB)", "mb"),
        ("weight_bytes", "weights in memory (MB)", "mb"), ("flops_per_token", "training MFLOPs per token", "mflops"),
        (SPEED, "generation tokens/s", "{:,.0f}"),
        ("val_bpb", "val bits per byte", "{:.4f}"), ("test_bpb", "test bits per byte", "{:.4f}")]


def _rows(rows: dict[str, dict]) -> list[tuple[str, str, str]]:
    """ROWS with the speed row repeated for every batch size the models were timed at."""
    sizes = sorted({int(k[len(SPEED):]) for row in rows.values() for k in row if k.startswith(SPEED)})
    return [row for key, label, how in ROWS
            for row in ([(f"{SPEED}{b}", f"{label}, batch {b}", how) for b in sizes] if key == SPEED
                        else [(key, label, how)])]


def _fmt(value, how: str) -> str:
    if value is None:
        return "–"
    if how == "mb":
        return f"{value / 1e6:.3f}"
    if how == "mflops":
        return f"{value / 1e6:.2f}"
    return how.format(value)


def _ratio(key: str, value, base) -> str:
    if value is None or base in (None, 0):
        return "–"
    if key.endswith("_bpb"):
        return f"{(value / base - 1) * 100:+.2f}%"
    return f"{value / base:.2f}x"


def comparison_table(rows: dict[str, dict], *, base: str = "original") -> str:
    """One row per measure; a column per model and, for each model but the base, its ratio to the base
    (bits per byte as a relative change)."""
    names = list(rows)
    header = ["", *[h for n in names for h in ([n] if n == base else [n, f"{n} vs {base}"])]]
    table = []
    for key, label, how in _rows(rows):
        if all(rows[n].get(key) is None for n in names):
            continue
        line = [label]
        for n in names:
            line.append(_fmt(rows[n].get(key), how))
            if n != base:
                line.append(_ratio(key, rows[n].get(key), rows[base].get(key)))
        table.append(line)
    return markdown_table(header, table)


def write_report(out_dir: Path, *, title: str, details: list[str], rows: dict[str, dict],
                 extra: str = "", record: dict | None = None) -> Path:
    """<out_dir>/report.md and metrics.json (the rows and the record) for `llm compress`/`llm distill`,
    written together or not at all."""
    text = (f"# {title}\n\n" + "\n".join(f"- {d}" for d in details) + "\n\n## Against the original\n\n"
            + comparison_table(rows) + "\n" + (f"\n{extra}\n" if extra else ""))
    with staged_folder(out_dir) as staging:
        (staging / "report.md").write_text(text)
        (staging / "metrics.json").write_text(json.dumps({"rows": rows, **(record or {})}, indent=2, default=str))
    return out_dir / "report.md"
