"""The last step: every kept document encoded once and appended to its split's token shard.

`{train,val,test}.bin` hold flat token ids (numpy uint16, or uint32 past 65,536 tokens), each
document followed by one `<|endoftext|>`; `documents.jsonl` gives each document's split,
metadata and token span [start, end) in its shard, separator excluded."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from lightning_llm.data.corpus import Clock, Corpus, in_batches
from lightning_llm.data.split import SPLITS, copies
from lightning_llm.data.tokenizer import EOT, UNK, ShardEncoder

_ENCODE_BYTES = 1 << 22  # text per tokenizer batch


def write_shards(corpus: Corpus, split_of: list[str], weights: dict[str, float], seed: int, tokenizer: Tokenizer,
                 out: Path, clock: Clock) -> tuple[dict, dict]:
    """Encode every kept document once and append it (train: as many times as its source's weight
    says) to its split's shard, with one EOT after it. Returns meta's splits and tokenizer stats."""
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)
    eot, unk = tokenizer.token_to_id(EOT), tokenizer.token_to_id(UNK)
    encoder, separator = ShardEncoder(tokenizer), np.array([eot])
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0, "left_out_by_weight": 0,
                 "counts": np.zeros(vocab_size, dtype=np.int64)} for s in SPLITS}
    shards = {s: open(out / f"{s}.bin", "wb") for s in SPLITS}
    bar = tqdm(total=corpus.size, unit="B", unit_scale=True, desc="tokenize", disable=None, file=sys.stderr)
    with open(out / "documents.jsonl", "w") as index:
        for batch in in_batches(range(len(corpus.docs)), lambda i: corpus.spans[i][1], _ENCODE_BYTES):
            started = time.perf_counter()
            encoded = encoder.encode(list(corpus.texts(batch)))
            clock.add({"encode": time.perf_counter() - started})
            rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}  # this batch's ids, EOT after each
            for i, ids in zip(batch, encoded):
                doc, split, n_bytes = corpus.docs[i], split_of[i], corpus.spans[i][1]
                info = stats[split]
                times = copies(doc.id, weights[doc.source], seed) if split == "train" else 1
                info["left_out_by_weight"] += times == 0
                for _ in range(times):
                    rows[split] += [ids, separator]
                    index.write(json.dumps({"id": doc.id, "source": doc.source, "split": split, "meta": doc.meta,
                                            "start": info["tokens"], "end": info["tokens"] + len(ids),
                                            "origin": doc.origin, **({"part": doc.part} if doc.part else {})}) + "\n")
                    info["tokens"] += len(ids) + 1
                    info["bytes"] += n_bytes
                    info["documents"] += 1
            for split, parts in rows.items():
                if parts:
                    flat = np.concatenate(parts).astype(dtype)
                    flat.tofile(shards[split])
                    stats[split]["counts"] += np.bincount(flat, minlength=vocab_size)
            bar.update(sum(corpus.spans[i][1] for i in batch))
    bar.close()
    for f in shards.values():
        f.close()
    meta_splits, token_stats = {}, {}
    for split, info in stats.items():
        unknown = int(info["counts"][unk]) if unk is not None else 0  # the shard's own count, copies included
        meta_splits[split] = {"tokens": info["tokens"], "bytes": info["bytes"], "documents": info["documents"],
                              "bytes_per_token": round(info["bytes"] / max(info["tokens"], 1), 4)}
        token_stats[split] = {**meta_splits[split], "unknown_rate": round(unknown / max(info["tokens"], 1), 6),
                              "vocab_used": round(float((info["counts"] > 0).mean()), 4),
                              "left_out_by_weight": info["left_out_by_weight"]}
    return meta_splits, {"dtype": dtype.name, "eot_id": eot, "splits": token_stats}
