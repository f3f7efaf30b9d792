"""The pipeline's machinery for bounded memory: the spool that holds the kept texts on disk,
size-bounded batches, a worker pool with a bounded number of tasks in flight, and a clock
per step."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from lightning_llm.data.documents import Document


class Corpus:
    """The kept documents: their texts in a spool file, their records in memory."""

    def __init__(self, path: Path):
        self.path, self.file = path, open(path, "wb")
        self.docs: list[Document] = []  # text-less: the text lives in the spool
        self.spans: list[tuple[int, int]] = []  # (offset, bytes) in the spool
        self.chars: list[int] = []
        self.size = 0

    def add(self, doc: Document) -> int:
        data = doc.text.encode("utf-8")
        self.file.write(data)
        self.docs.append(replace(doc, text=""))
        self.spans.append((self.size, len(data)))
        self.chars.append(len(doc.text))
        self.size += len(data)
        return len(self.docs) - 1

    def done_adding(self) -> None:
        """From now on texts are read back (with plain reads, not a memory map, whose
        pages would count as this process's memory)."""
        self.file.close()
        self.file = open(self.path, "rb")

    def keep(self, indices: list[int]) -> None:
        """Keep only these documents (their text stays in the spool, unread)."""
        self.docs = [self.docs[i] for i in indices]
        self.spans = [self.spans[i] for i in indices]
        self.chars = [self.chars[i] for i in indices]

    def text(self, i: int) -> str:
        offset, size = self.spans[i]
        return os.pread(self.file.fileno(), size, offset).decode("utf-8")

    def texts(self, indices: Iterable[int]) -> Iterator[str]:
        return (self.text(i) for i in indices)

    def remove(self) -> None:
        self.file.close()
        self.path.unlink()


def in_batches(items: Iterable, size_of: Callable, max_bytes: int) -> Iterator[list]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += size_of(item)
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@contextmanager
def worker_pool(workers: int) -> Iterator[Callable]:
    """`run(fn, items)`: fn over items in order, on `workers` processes, with a bounded number
    of items in flight (Pool.imap would read the whole input ahead)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        yield map
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        def run(fn, items):
            pending: deque = deque()
            for item in items:
                pending.append(pool.apply_async(fn, (item,)))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        yield run


class Clock:
    """Seconds per named step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def add(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
