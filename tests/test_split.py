from collections import Counter

import pytest

from lightning_llm.data.documents import Document
from lightning_llm.data.shakespeare import read_shakespeare
from lightning_llm.data.split import split_documents


def toy_corpus(n_groups=40):
    docs = []
    for g in range(n_groups):
        genre = ["comedy", "tragedy", "history", "poem"][g % 4]
        for edition in ("a", "b"):
            docs.append(Document(f"w{g}-{edition}", "x" * (100 + g), "toy", {"work": f"w{g}", "genre": genre}))
    return docs


def assignment(splits):
    return {d.id: name for name, docs in splits.items() for d in docs}


def test_no_group_straddles_splits():
    splits = split_documents(toy_corpus(), 0.1, 0.1, seed=3, group_by="work", stratify_by="genre")
    split_of_work = {}
    for name, docs in splits.items():
        for d in docs:
            assert split_of_work.setdefault(d.meta["work"], name) == name
    assert sum(len(v) for v in splits.values()) == 80


def test_each_split_keeps_every_stratum_and_roughly_its_share():
    splits = split_documents(toy_corpus(80), 0.1, 0.1, seed=3, group_by="work", stratify_by="genre")
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        genres = Counter(d.meta["genre"] for d in splits[name])
        assert set(genres) == {"comedy", "tragedy", "history", "poem"}
        assert abs(len(splits[name]) / 160 - share) < 0.05


def test_split_is_seeded():
    docs = toy_corpus()
    same = assignment(split_documents(docs, 0.1, 0.1, seed=1, group_by="work"))
    assert same == assignment(split_documents(docs, 0.1, 0.1, seed=1, group_by="work"))
    assert same != assignment(split_documents(docs, 0.1, 0.1, seed=2, group_by="work"))


def test_impossible_fractions_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        split_documents(toy_corpus(), 0.6, 0.5, seed=0)


def test_builtin_corpus_keeps_both_editions_of_a_work_together():
    docs = list(read_shakespeare(["gutenberg", "folio"]))
    splits = split_documents(docs, 0.1, 0.1, seed=1337, group_by="work", stratify_by="genre")
    by_work = {}
    for name, members in splits.items():
        for d in members:
            by_work.setdefault(d.meta["work"], set()).add(name)
    assert all(len(names) == 1 for names in by_work.values())
    hamlet = [d for d in docs if d.meta["work"] == "hamlet"]
    assert {d.meta["edition"] for d in hamlet} == {"gutenberg", "folio"}
    assert splits["val"] and splits["test"]
