"""What a corpus is: its sources and every step's settings, as conf/data/*.yaml spell them.

The defaults live in the dataclasses and the YAML says the same (tests/test_prepare.py holds
them equal, key for key), so a notebook's `DataConfig(...)` prepares what `llm prepare` does:

- `DataConfig()` is `llm prepare`'s default corpus, the built-in one (conf/data/shakespeare.yaml),
  with the step settings measured on it;
- a corpus of any other source starts from every corpus's defaults (conf/data/_defaults.yaml),
  which are the step dataclasses' own: `CleanConfig()`, `DedupConfig()`, `SplitConfig()`, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from lightning_llm.data.clean import CleanConfig
from lightning_llm.data.dedup import DedupConfig, NearDedupConfig
from lightning_llm.data.leakage import LeakageConfig
from lightning_llm.data.sources import SourceConfig
from lightning_llm.data.split import SplitConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def builtin_corpus_steps() -> dict:
    """The built-in corpus's own step settings (conf/data/shakespeare.yaml says why each)."""
    return {"clean": CleanConfig(min_chars=1000, min_words=100),
            "dedup": DedupConfig(near=NearDedupConfig(threshold=0.1, ngram=3)),
            "split": SplitConfig(group_by="work", stratify_by="genre")}


@dataclass
class DataConfig(SourceConfig):
    """A corpus: its primary source's keys (see SourceConfig), more sources under `mix`, and the
    steps' settings. A step left None gets its source's defaults: the built-in corpus's own for
    source=shakespeare, the step dataclass's otherwise."""

    name: str = "shakespeare"  # names the prepared folder and the primary source
    mix: dict[str, SourceConfig] = field(default_factory=dict)  # more sources: name -> source
    max_document_chars: int = 1_000_000  # a longer document is cut into pieces of at most this many characters
    clean: CleanConfig | None = None
    dedup: DedupConfig | None = None
    split: SplitConfig | None = None
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    # evaluation files (text, or JSONL string fields) whose word n-grams are cut out of the corpus
    decontaminate: list[str] = field(default_factory=list)
    workers: int = 0  # processes for cleaning and hashing (0: one per core); not part of the cache key

    def __post_init__(self):
        super().__post_init__()
        builtin = builtin_corpus_steps() if self.source == "shakespeare" else {}
        self.clean = self.clean or builtin.get("clean") or CleanConfig()
        self.dedup = self.dedup or builtin.get("dedup") or DedupConfig()
        self.split = self.split or builtin.get("split") or SplitConfig()
        for key, name in [("data.name", self.name)] + [("data.mix", name) for name in self.mix]:
            if not _NAME.fullmatch(name):
                raise ValueError(f"{key}: {name!r} must be letters, digits, '_', '.' or '-' "
                                 "(it names a folder or a source)")
        if self.name in self.mix:
            raise ValueError(f"data.mix.{self.name} has the name of the primary source: rename it")
        if self.max_document_chars < 1:
            raise ValueError(f"data.max_document_chars must be at least 1, got {self.max_document_chars}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be 0 (one per core) or more, got {self.workers}")

    def sources(self) -> dict[str, SourceConfig]:
        primary = SourceConfig(**{f.name: getattr(self, f.name) for f in fields(SourceConfig)})
        return {self.name: primary, **self.mix}
