"""The unit every pipeline step passes along: one document with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    id: str
    text: str
    source: str  # the name of the source it came from (a corpus, or a source of a mixture)
    meta: dict = field(default_factory=dict)  # labels usable as a group or stratum: genre, work, dir...
    origin: str = ""  # where it was read: a file, file:line or dataset[row]
    part: int = 0  # 0: a whole document; k: the k-th piece of one cut at data.max_document_chars

    def key(self, name: str) -> str | None:
        """A grouping or stratification value: `source`, `id`, or a metadata field (None when absent)."""
        if name in ("source", "id"):
            return getattr(self, name)
        value = self.meta.get(name)
        return None if value is None else str(value)
