"""Deduplication: exact (a hash of the normalised text), then near-duplicates (MinHash LSH).

Near-duplicate search keeps no text: each document's MinHash signature is computed once
(in a worker) and kept; at the end, LSH banding over all signatures proposes candidate
pairs and the signatures confirm them. The pairs form clusters (connected components),
which the split keeps in one split (`action: group`) or which are reduced to their first
document (`action: drop`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import xxhash

NEAR_ACTIONS = ("group", "drop")
_SCHEME = "affine32"
_CHUNK = 1 << 14  # shingles per step: bounds the (num_perm x shingles) work array to a few MB


@dataclass
class NearDedupConfig:
    enabled: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of the shingle sets at which two documents match
    unit: str = "word"  # word | char: what a shingle is made of
    ngram: int = 5  # shingle length in units
    num_perm: int = 128  # MinHash permutations: more is a finer similarity estimate, slower
    action: str = "group"  # group: keep all, a cluster never straddles splits | drop: keep its first document
    seed: int = 1

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"data.dedup.near.threshold must be in (0, 1], got {self.threshold}")
        if self.unit not in ("word", "char"):
            raise ValueError(f"data.dedup.near.unit must be word or char, got {self.unit!r}")
        if self.ngram < 1 or self.num_perm < 16:
            raise ValueError("data.dedup.near.ngram must be at least 1 and data.dedup.near.num_perm at least 16")
        if self.action not in NEAR_ACTIONS:
            raise ValueError(f"data.dedup.near.action must be group or drop, got {self.action!r}")


@dataclass
class DedupConfig:
    exact: bool = True  # drop a document whose normalised text (case, whitespace) was seen before
    near: NearDedupConfig = field(default_factory=NearDedupConfig)


def exact_key(text: str) -> bytes:
    """Equal for texts that differ only in case and whitespace."""
    return xxhash.xxh3_128_digest(" ".join(text.lower().split()).encode("utf-8"))


class Signer:
    """MinHash signatures of shingle hashes: datasketch's affine32 scheme and permutations, the
    same hash values as `MinHash.update_batch` (a test holds them equal), computed with one numpy
    expression per chunk instead of a Python int per shingle, three times faster."""

    def __init__(self, num_perm: int, seed: int):
        from datasketch import MinHash  # imported here: it pulls in scipy, which configs never need

        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
        self.a, self.b = a.reshape(-1, 1), b.reshape(-1, 1)

    def signature(self, shingles: np.ndarray) -> np.ndarray | None:
        """uint32[num_perm], or None for a text without shingles."""
        if not len(shingles):
            return None
        hashed = fmix32((shingles >> np.uint64(32)).astype(np.uint32))  # the scheme takes 32-bit values
        out = np.full(len(self.a), np.iinfo(np.uint32).max, dtype=np.uint32)
        work = np.empty((len(self.a), min(len(hashed), _CHUNK)), dtype=np.uint32)
        for start in range(0, len(hashed), _CHUNK):
            chunk = hashed[start:start + _CHUNK]
            permuted = work[:, :len(chunk)]
            np.multiply(self.a, chunk, out=permuted)  # a * h + b modulo 2**32, in place
            np.add(permuted, self.b, out=permuted)
            np.minimum(out, permuted.min(axis=1), out=out)
        return out


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before permuting."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class NearDuplicates:
    """Near-duplicate pairs, from the documents' signatures alone (num_perm x 4 bytes each).

    The signature is cut into bands the way datasketch's MinHashLSH cuts it for this threshold,
    weighted for recall (a false positive costs one comparison, a false negative loses a
    duplicate). Documents that agree on a whole band are candidates, found by sorting each
    band's hashes; a candidate pair is kept when its estimated Jaccard similarity (the share of
    equal signature values) reaches the threshold. MinHashLSH's own index keeps Python sets per
    bucket, about 6 kB per document: too much for a corpus of millions in bounded memory."""

    def __init__(self, config: NearDedupConfig):
        from datasketch import MinHashLSH

        self.config = config
        layout = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=(0.1, 0.9))
        self.bands, self.rows = layout.b, layout.r
        self.keys: list[int] = []
        self.signatures = np.empty((1024, config.num_perm), dtype=np.uint32)

    def add(self, key: int, signature: np.ndarray | None) -> None:
        if signature is None:
            return
        if len(self.keys) == len(self.signatures):
            self.signatures = np.concatenate([self.signatures, np.empty_like(self.signatures)])
        self.signatures[len(self.keys)] = signature
        self.keys.append(key)

    def pairs(self) -> list[tuple[int, int, float]]:
        """(key, later key, estimated Jaccard) for every pair at or above the threshold."""
        signatures, candidates = self.signatures[:len(self.keys)], set()
        for band in range(self.bands):
            columns = signatures[:, band * self.rows:(band + 1) * self.rows].astype(np.uint64)
            band_hash = np.zeros(len(columns), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for column in columns.T:
                    band_hash = band_hash * np.uint64(0x9E3779B97F4A7C15) + column
            order = np.argsort(band_hash, kind="stable")
            ordered = band_hash[order]
            first = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
            sizes = np.diff(np.append(first, len(ordered)))
            for start, size in zip(first[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
                members = sorted(order[start:start + size].tolist())
                if size <= 32:
                    candidates.update(itertools.combinations(members, 2))
                else:  # a crowded bucket: its first member stands for it
                    candidates.update((members[0], m) for m in members[1:])
        if not candidates:
            return []
        a, b = np.array(sorted(candidates)).T
        similarity = np.concatenate([(signatures[a[i:i + 4096]] == signatures[b[i:i + 4096]]).mean(axis=1)
                                     for i in range(0, len(a), 4096)])
        keys = self.keys
        return [(keys[i], keys[j], round(float(s), 4)) for i, j, s in zip(a.tolist(), b.tolist(), similarity.tolist())
                if s >= self.config.threshold]


def components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Component label of each of n nodes joined by the pairs (union-find by scipy)."""
    if not pairs:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = np.array(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def labels_to_groups(labels: np.ndarray) -> list[list[int]]:
    """Indices by label, each list in index order, labels in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(i)
    return list(groups.values())
