"""Files that people and later stages read, written whole or not at all: a temporary file in
the same folder, then a rename. The temporary name carries the process id, so two writers of
one file (sweep workers sharing a study) never rename each other's half-written file.
Plain Python, so the core may use it too."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str))


def markdown_table(header: list[str], rows: list[list], cell=str) -> str:
    """A Markdown table; `cell` formats every value that is not already a string."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(v if isinstance(v, str) else cell(v) for v in row) + " |"
                              for row in rows])


def pyplot():
    """matplotlib.pyplot on the file-only backend: runs have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, **savefig_kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, **savefig_kwargs)
    pyplot().close(fig)
    os.replace(tmp, path)
