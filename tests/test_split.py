from collections import defaultdict

import pytest

from lightning_llm.data.documents import Document
from lightning_llm.data.shakespeare import read_shakespeare
from lightning_llm.data.split import SplitConfig, copies, split_documents

GENRES = ["comedy", "tragedy", "history", "poem"]


def toy_corpus(n_groups=40, sizes=lambda g: 100 + 37 * g % 500):
    docs = []
    for g in range(n_groups):
        for edition in ("a", "b"):
            docs.append(Document(f"w{g}-{edition}", "x" * sizes(g), "toy", {"work": f"w{g}", "genre": GENRES[g % 4]}))
    return docs


def assignment(splits):
    return {d.id: name for name, docs in splits.items() for d in docs}


def test_no_group_straddles_splits():
    splits = split_documents(toy_corpus(), SplitConfig(seed=3, group_by="work", stratify_by="genre"))
    split_of_work = {}
    for name, docs in splits.items():
        for d in docs:
            assert split_of_work.setdefault(d.meta["work"], name) == name
    assert sum(len(v) for v in splits.values()) == 80


def test_near_duplicate_pairs_join_groups_across_keys():
    """A cluster (w0-a ~ w1-a) and the group key (work) together: all of w0 and w1 land in one split."""
    docs = toy_corpus(40)
    index = {d.id: i for i, d in enumerate(docs)}
    for seed in range(5):
        split_of = assignment(split_documents(docs, SplitConfig(seed=seed, group_by="work"),
                                              near_pairs=[(index["w0-a"], index["w1-a"])]))
        assert len({split_of[i] for i in ("w0-a", "w0-b", "w1-a", "w1-b")}) == 1
    ungrouped = [assignment(split_documents(docs, SplitConfig(seed=s))) for s in range(5)]
    assert any(len({a["w0-a"], a["w0-b"]}) > 1 for a in ungrouped)  # without group_by, editions do part


def test_each_split_keeps_the_corpus_mix_of_the_stratum():
    docs = toy_corpus(200)
    splits = split_documents(docs, SplitConfig(seed=3, group_by="work", stratify_by="genre"))
    corpus_chars = defaultdict(int)
    for d in docs:
        corpus_chars[d.meta["genre"]] += len(d.text)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        chars = defaultdict(int)
        for d in splits[name]:
            chars[d.meta["genre"]] += len(d.text)
        for genre in GENRES:  # every stratum holds its share of each split, to within 2 points
            assert abs(chars[genre] / corpus_chars[genre] - share) < 0.02, (name, genre)


def test_small_strata_still_reach_every_split():
    """Big groups are placed first, so a stratum of a few unequal groups is not all dealt to train."""
    sizes = [95_000, 86_000, 14_000, 8_500, 2_000]  # the Shakespeare poems
    docs = [Document(f"p{i}", "x" * n, "toy", {"genre": "poem"}) for i, n in enumerate(sizes)]
    for seed in range(10):
        splits = split_documents(docs, SplitConfig(seed=seed, stratify_by="genre"))
        assert all(splits[s] for s in ("train", "val", "test")), seed


def test_split_is_seeded_and_independent_of_input_order():
    docs = toy_corpus()
    same = assignment(split_documents(docs, SplitConfig(seed=1, group_by="work")))
    assert same == assignment(split_documents(docs[::-1], SplitConfig(seed=1, group_by="work")))
    assert same != assignment(split_documents(docs, SplitConfig(seed=2, group_by="work")))


def test_impossible_fractions_are_refused():
    with pytest.raises(ValueError, match="sum below 1"):
        SplitConfig(val=0.6, test=0.5)


def test_builtin_corpus_keeps_both_editions_of_a_work_together():
    docs = list(read_shakespeare(["gutenberg", "folio"]))
    splits = split_documents(docs, SplitConfig(group_by="work", stratify_by="genre"))
    by_work = defaultdict(set)
    for name, members in splits.items():
        for d in members:
            by_work[d.meta["work"]].add(name)
    assert all(len(names) == 1 for names in by_work.values())
    assert {d.meta["edition"] for d in docs if d.meta["work"] == "hamlet"} == {"gutenberg", "folio"}
    assert splits["val"] and splits["test"]


def test_weights_repeat_or_subsample_train_documents_reproducibly():
    ids = [f"doc{i}" for i in range(4000)]
    assert all(copies(i, 2.0, seed=0) == 2 for i in ids)
    half = [copies(i, 0.5, seed=0) for i in ids]
    assert set(half) == {0, 1} and abs(sum(half) / len(ids) - 0.5) < 0.03
    assert half == [copies(i, 0.5, seed=0) for i in ids]
    assert abs(sum(copies(i, 1.25, seed=0) for i in ids) / len(ids) - 1.25) < 0.03


def test_containment_pairs_keep_an_excerpt_with_its_source_in_every_seed():
    """An excerpt (a third of a long text) and its source are far apart as wholes; the containment
    pair joins them, and the split keeps them together whatever the seed."""
    import random

    from lightning_llm.data.dedup import containment_pairs
    from lightning_llm.data.ngrams import ngram_hashes, word_units

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(words) for _ in range(300)) for _ in range(60)]
    texts.append(" ".join(texts[0].split()[:100]))  # document 60 is a third of document 0
    docs = [Document(f"d{i:02d}", t, "toy", {"genre": GENRES[i % 4]}) for i, t in enumerate(texts)]
    pairs = containment_pairs([ngram_hashes(word_units(t), 13) for t in texts], 0.5, max_docs=16)
    assert [(a, b) for a, b, _ in pairs] == [(0, 60)] and pairs[0][2] == 1.0
    apart = 0
    for seed in range(30):
        together = assignment(split_documents(docs, SplitConfig(seed=seed), near_pairs=[(0, 60)]))
        assert together["d00"] == together["d60"]
        alone = assignment(split_documents(docs, SplitConfig(seed=seed)))
        apart += alone["d00"] != alone["d60"]
    assert apart > 0  # without the pair, some seeds part them
