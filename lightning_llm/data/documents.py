"""The unit every pipeline step passes along: one document with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    id: str
    text: str
    source: str
    meta: dict = field(default_factory=dict)

    def key(self, name: str) -> str:
        """A grouping or stratification value: `source`, `id`, or a metadata field."""
        if name in ("source", "id"):
            return getattr(self, name)
        if name not in self.meta:
            raise KeyError(f"document {self.id!r} has no metadata field {name!r} (has: {', '.join(sorted(self.meta))})")
        return str(self.meta[name])
