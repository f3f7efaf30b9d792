"""Exact and near-duplicate detection, cluster grouping, and the leakage check on planted duplicates."""

import json
import random

import numpy as np
import pytest

from lightning_llm.data import DataConfig, SplitConfig, TokenizerConfig, prepare
from lightning_llm.data.dedup import NearDedupConfig, NearDuplicates, Signer, exact_key
from lightning_llm.data.ngrams import ngram_hashes, word_units

WORDS = [f"w{i}" for i in range(3000)]


def random_text(rng, n_words=400):
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(n_words // 10)]
    return "\n".join(lines) + "\n"


def near_copy(rng, text, changed=0.05):
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(changed * len(words))):
        words[i] = rng.choice(WORDS)
    return " ".join(words)


def jaccard(a, b, n):
    x, y = set(ngram_hashes(word_units(a), n).tolist()), set(ngram_hashes(word_units(b), n).tolist())
    return len(x & y) / len(x | y)


def test_exact_key_ignores_case_and_whitespace_only():
    assert exact_key("To be,  or not\nto be.") == exact_key("to BE, or not to be.\n")
    assert exact_key("To be, or not to be.") != exact_key("To be, or not to be!")


def test_signatures_are_datasketch_minhashes():
    from datasketch import MinHash

    shingles = np.random.default_rng(0).integers(0, 2**63, size=40_000, dtype=np.uint64)
    reference = MinHash(num_perm=64, seed=5, scheme="affine32", hashfunc=int)
    reference.update_batch((shingles >> np.uint64(32)).astype(np.uint32).tolist())
    np.testing.assert_array_equal(Signer(64, 5).signature(shingles), reference.hashvalues)


def test_word_units_are_lowercased_runs_of_letters_and_digits():
    units = word_units("Hello, hello WORLD! \u00e7a va? l'\u00e9t\u00e9 42x _x_\n\nhello")
    assert len(units) == 10 and units[0] == units[1] == units[-1] and len(set(units.tolist())) == 8
    assert units[8] == word_units("X")[0] != units[7]  # "_x_" is the word "x"; "42x" another
    assert len(word_units("... !!")) == 0


def test_banded_signatures_find_the_near_duplicates_and_estimate_their_similarity():
    rng = random.Random(0)
    config = NearDedupConfig(threshold=0.5, ngram=3)
    signer, index = Signer(config.num_perm, config.seed), NearDuplicates(config)
    base = [random_text(rng) for _ in range(30)]
    copies = [near_copy(rng, text) for text in base[:10]]
    for i, text in enumerate(base + copies):
        index.add(i, signer.signature(ngram_hashes(word_units(text), 3)))
    index.add(99, signer.signature(np.empty(0, dtype=np.uint64)))  # no shingles: nothing to index
    pairs = index.pairs()
    assert [(a, b) for a, b, _ in pairs] == [(i, 30 + i) for i in range(10)]  # and no unrelated pair
    for a, _, estimate in pairs:
        assert estimate == pytest.approx(jaccard(base[a], copies[a], 3), abs=0.15)


def corpus_with_planted_duplicates(tmp_path, seed=0):
    """60 random documents and a near copy of each of the first 25, and one exact copy."""
    rng = random.Random(seed)
    texts = [random_text(rng) for _ in range(60)]
    texts += [near_copy(rng, text) for text in texts[:25]] + [texts[59].upper()]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "kind": "copy" if i >= 60 else "original"}) + "\n"
                            for i, t in enumerate(texts)))
    return path


def planted(tmp_path, **near):
    data = DataConfig(name="planted", source="jsonl", paths=[str(corpus_with_planted_duplicates(tmp_path))],
                      workers=1, split=SplitConfig(seed=1))
    data.dedup.near = NearDedupConfig(threshold=0.5, ngram=3, **near)
    prepared = prepare(data, TokenizerConfig(), tmp_path / "cache")
    return prepared, json.loads((prepared.dir / "report.json").read_text())


def test_near_duplicate_clusters_never_straddle_and_leakage_shows_it(tmp_path):
    prepared, report = planted(tmp_path)
    assert report["clean"]["dropped"]["exact_duplicate"]["count"] == 1
    near = report["near_duplicates"]
    assert near["clusters"] == 25 and near["documents_in_clusters"] == 50 and near["straddling_splits"] == 0
    index = [json.loads(line) for line in (prepared.dir / "documents.jsonl").read_text().splitlines()]
    assert len(index) == 85
    leakage = report["leakage"]
    for split in ("val", "test"):
        assert leakage["grouped"][split]["ngrams"] > 0
        assert leakage["grouped"][split]["share"] == 0  # random texts share no 13-gram
    # The same split made document by document puts copies on both sides: the check sees it.
    assert max(leakage["ungrouped"][s]["share"] for s in ("val", "test")) > 0.05


def test_action_drop_keeps_the_first_of_each_cluster(tmp_path):
    _, report = planted(tmp_path, action="drop")
    dropped = report["clean"]["dropped"]["near_duplicate"]
    assert dropped["count"] == 25 and report["clean"]["kept"] == 60
    assert all(e["jaccard"] >= 0.5 for e in dropped["examples"])


def test_default_corpus_clusters_are_the_two_editions_of_each_play(prepared):
    report = json.loads((prepared.dir / "report.json").read_text())
    index = {d["id"]: d for d in map(json.loads, (prepared.dir / "documents.jsonl").read_text().splitlines())}
    near = report["near_duplicates"]
    plays_with_two_editions = {d["meta"]["work"] for d in index.values() if d["meta"]["edition"] == "folio"}
    assert near["clusters"] == len(plays_with_two_editions) == 35 and near["straddling_splits"] == 0
    assert len(near["largest"]) == 35  # all of them listed
    for cluster in near["largest"]:
        members = [index[i] for i in cluster["documents"]]
        assert len({m["meta"]["work"] for m in members}) == 1
        assert sorted(m["meta"]["edition"] for m in members) == ["folio", "gutenberg"]
    leakage = report["leakage"]
    assert leakage["grouped"]["val"]["share"] < leakage["ungrouped"]["val"]["share"]
