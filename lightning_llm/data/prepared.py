"""A finished prepared-data folder, as training and evaluation read it. Cheap to import: it
needs json and numpy only, never the pipeline that builds the folder (lightning_llm.data.pipeline)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PreparedData:
    """`meta.json`, `tokenizer.json` and the `{train,val,test}.bin` token shards of one folder."""

    dir: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text())

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / "tokenizer.json"

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.dir / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
