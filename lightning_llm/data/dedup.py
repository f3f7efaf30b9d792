"""Deduplication: exact (a hash of the normalised text), then near-duplicates (MinHash LSH).

Near-duplicate search keeps no text: each document's MinHash signature is computed once
(in a worker) and kept; at the end, LSH banding over all signatures proposes candidate
pairs and the signatures confirm them. The pairs form clusters (connected components),
which the split keeps in one split (`action: group`) or which are reduced to their first
document (`action: drop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash

NEAR_ACTIONS = ("group", "drop")
_SCHEME = "affine32"
_PAIR_CHUNK = 1 << 20  # document pairs counted per step of containment_pairs
_SHARD_BITS = 3  # containment_pairs counts the n-grams in 8 shards by their top 3 bits
_SHARDS = 1 << _SHARD_BITS
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
    # Lines and paragraphs (case and whitespace normalised, so rewrapped text matches) that an
    # earlier document held are cut out (spans.py); shorter ones are never cut. 64: on the built-in
    # corpus the longest line repeated across documents has 61 characters (bench/data_prep.py spans).
    lines: bool = True
    paragraphs: bool = True
    min_line_chars: int = 64
    max_hashes: int = 1 << 24  # lines and paragraphs remembered, 8 bytes each; past it only checked
    near: NearDedupConfig = field(default_factory=NearDedupConfig)

    def __post_init__(self):
        if self.min_line_chars < 1 or self.max_hashes < 1:
            raise ValueError("data.dedup.min_line_chars and data.dedup.max_hashes must be at least 1")


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
        """(key, later key, estimated Jaccard) for every pair at or above the threshold: every pair
        of documents that agree on a whole band, as MinHashLSH's query would propose them (a test
        holds the two equal), however many share a bucket. Buckets of up to 32 documents list
        their pairs, which are deduplicated over the bands before they are compared; a larger one
        (thousands of copies of a page) is compared block by block, keeping only the pairs that
        pass, so its k(k-1)/2 candidates never sit in memory at once."""
        signatures = self.signatures[:len(self.keys)]
        threshold = self.config.threshold
        candidates, passed = [], []
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
            for size in np.unique(sizes[(sizes > 1) & (sizes <= 32)]).tolist():
                p, q = np.triu_indices(size, 1)
                starts = first[sizes == size][:, None]
                a, b = order[starts + p], order[starts + q]
                candidates.append(np.minimum(a, b).ravel() * len(signatures) + np.maximum(a, b).ravel())
            for start, size in zip(first[sizes > 32].tolist(), sizes[sizes > 32].tolist()):
                passed.append(self._crowded_bucket(signatures, np.sort(order[start:start + size])))
        keys = np.unique(np.concatenate(candidates)) if candidates else np.empty(0, dtype=np.int64)
        a, b = keys // max(len(signatures), 1), keys % max(len(signatures), 1)
        similarity = np.concatenate([(signatures[a[i:i + 4096]] == signatures[b[i:i + 4096]]).mean(axis=1)
                                     for i in range(0, len(a), 4096)]) if len(a) else np.empty(0)
        found = {(i, j): s for i, j, s in zip(a.tolist(), b.tolist(), similarity.tolist()) if s >= threshold}
        for block in passed:
            found.update(block)
        return [(self.keys[i], self.keys[j], round(float(s), 4)) for (i, j), s in sorted(found.items())]

    def _crowded_bucket(self, signatures: np.ndarray, members: np.ndarray) -> dict:
        """The pairs of a bucket's members (sorted indices) at or above the threshold."""
        out = {}
        block = max(1, (1 << 22) // (len(members) * signatures.shape[1]))  # rows x members x num_perm <= 4M
        for i in range(0, len(members), block):
            rows = members[i:i + block]
            similarity = (signatures[rows][:, None, :] == signatures[members][None, :, :]).mean(axis=2)
            for r, c in zip(*np.nonzero(similarity >= self.config.threshold)):
                if rows[r] < members[c]:
                    out[(int(rows[r]), int(members[c]))] = float(similarity[r, c])
        return out


def containment_pairs(per_doc: list[np.ndarray], threshold: float, max_docs: int) -> list[tuple[int, int, float]]:
    """Pairs of documents (a < b) that share at least `threshold` of the distinct n-gram hashes
    of the one that has fewer, with that share: a document that is mostly a part of another
    joins it, however unlike the two are as wholes (whole-document Jaccard misses it).

    Exact on the hashes given (the leakage check's sample, hash-sampled under its cap, so the
    shares estimate those of all n-grams). An n-gram held by more than `max_docs` documents is
    a template, not kinship, and is not counted: grouping on it would make one group of the
    corpus (line and paragraph dedup remove templates, the leakage gate reports what is left).
    Memory: the hashes are counted in _SHARDS shards by their top bits (n-gram hashing in
    shards; each array of per_doc is sorted in place first): besides the hashes given, one
    shard's copy (an eighth of them) and the
    distinct pairs of documents that share any, counted in steps of at most _PAIR_CHUNK keys."""
    n = len(per_doc)
    if not n:
        return []
    size = np.zeros(n, dtype=np.int64)
    keys, shared = np.empty(0, dtype=np.int64), np.empty(0)
    for h in per_doc:
        h.sort()  # in place: then each shard is a slice of each array
    bounds = np.array([s << (64 - _SHARD_BITS) for s in range(1, _SHARDS)], dtype=np.uint64)
    cuts = [np.concatenate(([0], np.searchsorted(h, bounds), [len(h)])) for h in per_doc]
    cuts = np.array(cuts)
    for shard in range(_SHARDS):
        lengths = cuts[:, shard + 1] - cuts[:, shard]
        if not lengths.sum():
            continue
        hashes = np.concatenate([h[c[shard]:c[shard + 1]] for h, c in zip(per_doc, cuts)])
        owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
        order = np.argsort(hashes, kind="stable")  # stable: each hash's holders stay in document order
        hashes, owner = hashes[order], owner[order]
        del order
        once = np.concatenate(([True], (hashes[1:] != hashes[:-1]) | (owner[1:] != owner[:-1])))
        hashes, owner = hashes[once], owner[once]  # a document's repeated n-gram counts once
        size += np.bincount(owner, minlength=n)
        first = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
        holders = np.diff(np.append(first, len(hashes)))
        del hashes
        for k in np.unique(holders[(holders > 1) & (holders <= max_docs)]).tolist():
            p, q = np.triu_indices(k, 1)
            groups = first[holders == k]
            step = max(1, _PAIR_CHUNK // len(p))  # n-grams per step: at most _PAIR_CHUNK pair keys at once
            for i in range(0, len(groups), step):
                starts = groups[i:i + step, None]
                new, count = np.unique((owner[starts + p] * n + owner[starts + q]).ravel(), return_counts=True)
                keys, inverse = np.unique(np.concatenate([keys, new]), return_inverse=True)
                shared = np.bincount(inverse, weights=np.concatenate([shared, count]), minlength=len(keys))
    if not len(keys):
        return []
    a, b = keys // n, keys % n
    share = shared / np.minimum(size[a], size[b])
    return [(i, j, round(float(s), 4)) for i, j, s in zip(a.tolist(), b.tolist(), share.tolist()) if s >= threshold]


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
