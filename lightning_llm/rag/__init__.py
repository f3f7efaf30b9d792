"""Retrieval-augmented generation: `llm index` turns a folder of .txt/.md/.jsonl files into a BM25
index of passages (bm25s) with each passage's file and line range; `llm serve rag.index=<name>`
retrieves passages for a chat request, puts them in the template's `documents`, and cites them."""

from lightning_llm.rag.index import (
    BuildResult,
    Hit,
    Index,
    IndexSettings,
    RetrieverConfig,
    build_index,
    index_dir,
    load_index,
)
from lightning_llm.rag.passages import ChunkConfig, Passage

__all__ = ["BuildResult", "ChunkConfig", "Hit", "Index", "IndexSettings", "Passage", "RetrieverConfig", "build_index",
           "index_dir", "load_index"]
