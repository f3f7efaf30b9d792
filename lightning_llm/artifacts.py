"""Files that people and later stages read, written whole or not at all: a temporary file in
the same folder, then a rename. The temporary name carries the process id, so two writers of
one file (sweep workers sharing a study) never rename each other's half-written file.
Plain Python, so the core may use it too."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str))


def write_jsonl(path: Path, rows) -> int:
    """One JSON object per line (non-ASCII kept as is), written whole or not at all; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` (the user's umask, not mkdtemp's 0700) that replaces `out`
    only if the block finishes: a crash or an error never leaves a half-written folder at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)
        yield staging
        for path in staging.rglob("*"):  # safetensors writes its files 0600: they get the umask too
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o666 & ~mask)
        previous = out.with_name(f".{out.name}.previous")
        if out.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(out, previous)
        os.rename(staging, out)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Busy(Exception):
    """Another process holds the folder's lock; the message names its pid."""


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock` for as long as the block runs, so that two processes never write one
    folder's set of files at once (each file is atomic, but a set could mix two writers).
    Fails at once with Busy rather than waiting; the lock goes with the process, even on kill -9."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"another process (pid {holder}) is writing {folder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


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
