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


# ---- crowded buckets: every pair MinHashLSH proposes, not only those with a bucket's first member -----------


def test_crowded_buckets_give_the_pairs_minhashlsh_finds():
    """80 variants of one text (1% to 16% of words changed) share many bands: buckets of more than
    32 documents, where pairs among later members matter. Every pair MinHashLSH's queries propose
    whose estimated Jaccard reaches the threshold is found, and nothing else."""
    from datasketch import MinHash, MinHashLSH

    rng = random.Random(3)
    config = NearDedupConfig(threshold=0.5, ngram=3)
    signer, index = Signer(config.num_perm, config.seed), NearDuplicates(config)
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=(0.1, 0.9))
    base = random_text(rng, 600)
    texts = [near_copy(rng, base, changed=0.01 + 0.15 * k / 80) for k in range(80)]
    texts += [random_text(rng) for _ in range(40)]
    signatures = []
    for i, text in enumerate(texts):
        signature = signer.signature(ngram_hashes(word_units(text), 3))
        signatures.append(signature)
        index.add(i, signature)
        lsh.insert(i, MinHash(num_perm=config.num_perm, hashvalues=signature, scheme="affine32"))
    largest = max(len(table.get(key)) for table in lsh.hashtables for key in table.keys())
    assert largest > 32  # the case the old banding cut short
    expected = set()
    for i, signature in enumerate(signatures):
        for j in lsh.query(MinHash(num_perm=config.num_perm, hashvalues=signature, scheme="affine32")):
            if i < j and (signatures[i] == signatures[j]).mean() >= config.threshold:
                expected.add((i, j))
    found = index.pairs()
    assert {(a, b) for a, b, _ in found} == expected
    first_member_only = {(a, b) for a, b in expected if a == min(expected)[0]}
    assert len(expected) > len(first_member_only) + 100  # most pairs do not involve the first member
    assert all(s == pytest.approx((signatures[a] == signatures[b]).mean(), abs=1e-4) for a, b, s in found)


# ---- lines and paragraphs --------------------------------------------------------------------------------


def deduped(texts, min_chars=20, lines=True, paragraphs=True, max_hashes=1 << 20):
    from lightning_llm.data.spans import SpanDeduper, span_hashes

    spans = SpanDeduper(min_chars=min_chars, max_hashes=max_hashes)
    out = []
    for i, text in enumerate(texts):
        kept, commit = spans.apply(f"d{i}", text, span_hashes(text, min_chars, lines, paragraphs))
        spans.commit(commit)
        out.append(kept)
    return out, spans


def test_a_rewrapped_paragraph_is_cut_from_later_documents_and_short_lines_stay():
    import textwrap

    rng = random.Random(1)
    licence = " ".join(rng.choice(WORDS) for _ in range(80))
    own = [random_text(rng, 40) for _ in range(3)]
    texts = [f"ACT I.\nHAMLET.\n\n{own[k]}\n{textwrap.fill(licence, width)}\n\nThe end, as it was and is.\nSigned {k}\nACT I.\n"
             for k, width in enumerate((50, 70, 90))]
    out, spans = deduped(texts)
    assert out[0] == texts[0]  # the first occurrence is kept whole
    for k in (1, 2):
        assert "ACT I.\nHAMLET." in out[k] and own[k].strip() in out[k]  # short lines and own text stay
        assert licence.split()[5] not in out[k]  # the licence paragraph went, whatever its wrapping
        assert "The end, as it was and is." not in out[k]  # a repeated long line went
        assert out[k].endswith(f"\n\nSigned {k}\nACT I.\n")
    counts = spans.report(SimpleConfig())
    assert counts["paragraphs_removed"] == 2 and counts["lines_removed"] == 2 and counts["documents_changed"] == 2
    assert counts["chars_removed"] == sum(len(t) - len(o) for t, o in zip(texts, out))
    assert counts["examples"][0]["id"] == "d1"


class SimpleConfig:
    lines = paragraphs = True


def test_a_document_keeps_its_own_refrains_and_paragraph_dedup_alone_keeps_lines():
    refrain = "With a hey, and a ho, and a hey nonino, that o'er the green corn-field did pass"
    text = f"{refrain}\nfirst verse of the song goes here\n\n{refrain}\nsecond verse of the song goes here\n"
    out, _ = deduped([text])
    assert out == [text]  # repeats inside one document are not cut
    other = f"A new song\n\n{refrain}\nthird verse\n"
    assert deduped([text, other], paragraphs=False)[0][1] == "A new song\n\nthird verse\n"
    assert deduped([text, other], lines=False)[0][1] == other  # its paragraph as a whole is new


def test_the_hash_set_holds_at_most_its_capacity():
    from lightning_llm.data.spans import HashSet

    hashes = np.random.default_rng(0).integers(1, 2**63, size=200_000, dtype=np.uint64)
    held = HashSet(150_000)
    for chunk in np.array_split(hashes, 50):
        held.add(chunk)
    held.flush()
    assert len(held) == 150_000 and held.refused == 50_000 and held.sorted.nbytes == 150_000 * 8
    assert held.contains(hashes[:150_000]).all() and not held.contains(hashes[150_000:]).any()
    assert (np.diff(held.sorted.astype(np.float64)) > 0).all()


# ---- containment -----------------------------------------------------------------------------------------


def test_containment_pairs_join_a_document_mostly_inside_another_and_ignore_templates():
    from lightning_llm.data.dedup import containment_pairs

    rng = random.Random(2)
    big = random_text(rng, 2000)
    part = " ".join(big.split(" ")[:300]) + " " + random_text(rng, 100)  # 3/4 of it is in `big`
    template = random_text(rng, 400)
    others = [random_text(rng, 200) + template for _ in range(20)]  # a template held by 20 documents
    per_doc = [ngram_hashes(word_units(t), 13) for t in [big, part, *others]]
    pairs = containment_pairs(per_doc, 0.5, max_docs=16)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1)] and 0.6 < pairs[0][2] < 0.8
    assert len(containment_pairs(per_doc, 0.5, max_docs=32)) == 1 + 20 * 19 // 2  # counted when not a template


# ---- the template corpus: the target, the gate, decontamination ----------------------------------


def template_corpus(folder, files=400):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / "make_corpus.py"
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_template_corpus(folder, files=files, seed=0)


def prepare_files(folder, cache, **changes):
    from lightning_llm.config import to_dataclass

    data = to_dataclass(DataConfig, {"name": "tpl", "source": "text_files", "paths": [str(folder)], "workers": 1,
                                     **changes}, "data")
    prepared = prepare(data, TokenizerConfig(), cache)
    return prepared, json.loads((prepared.dir / "report.json").read_text())


def held_out(report):
    chars = {k: v["chars"] for k, v in report["split"]["splits"].items()}
    return (chars["val"] + chars["test"]) / sum(chars.values())


def worst_leak(report):
    return max(report["leakage"]["grouped"][s]["share"] for s in ("val", "test"))


def test_template_corpus_meets_the_target_with_default_settings(tmp_path, caplog):
    """400 files, two thirds of their text one of two licence bodies wrapped at each file's own
    width, a tenth revisions of another file: whole-document dedup leaves 60%+ of held-out
    13-grams in train; the defaults bring it under 5% and keep a fifth of the text held out."""
    made = template_corpus(tmp_path / "files")
    assert made["licence"] > 0.6 * (made["licence"] + made["own"] + made["headers"])
    with caplog.at_level("WARNING"):
        _, off = prepare_files(tmp_path / "files", tmp_path / "cache",
                               dedup={"lines": False, "paragraphs": False}, split={"containment": None})
    assert worst_leak(off) > 0.6
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("leakage:")]
    assert len(warnings) == 1 and "over data.split.max_leakage=0.05" in warnings[0]
    assert "fix: data.dedup.lines=true data.dedup.paragraphs=true" in warnings[0]
    assert off["leakage"]["gate"]["passed"] is False

    caplog.clear()
    with caplog.at_level("WARNING"):
        prepared, report = prepare_files(tmp_path / "files", tmp_path / "cache")
    assert worst_leak(report) <= 0.05 and held_out(report) >= 0.15
    assert report["leakage"]["gate"]["passed"] and not [r for r in caplog.records if "leakage" in r.getMessage()]
    spans = report["clean"]["repeated_lines"]
    assert spans["paragraphs_removed"] > 2000 and spans["documents_changed"] >= 395
    assert report["containment"]["pairs"] >= 20  # revisions stay with what they revise
    card = (prepared.dir / "report.md").read_text()
    assert "### Repeated lines and paragraphs" in card and "### Containment groups" in card
    assert "Leakage gate (`data.split.max_leakage` = 5.00%): passed." in card


def test_dedup_alone_leaves_revisions_and_the_gate_names_a_containment_that_fixes_it(tmp_path, caplog):
    template_corpus(tmp_path / "files")
    with caplog.at_level("WARNING"):
        _, report = prepare_files(tmp_path / "files", tmp_path / "cache", split={"containment": None})
    assert worst_leak(report) > 0.05
    message = report["leakage"]["gate"]["message"]
    assert "fix: data.split.containment=0.3 (measured: " in message
    fixed = float(message.split("measured: ")[1].split("%")[0]) / 100
    _, again = prepare_files(tmp_path / "files", tmp_path / "cache", split={"containment": 0.3})
    assert worst_leak(again) == pytest.approx(fixed, abs=1e-4) and fixed <= 0.05  # the named fix works


def test_on_leak_error_refuses_in_one_line_and_leaves_nothing(tmp_path):
    import os
    import subprocess
    import sys

    template_corpus(tmp_path / "files", files=120)
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(tmp_path / "out"), "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", "lightning_llm.cli", "prepare", "data=text_files",
                             f"data.paths=[{tmp_path}/files]", "data.dedup.paragraphs=false",
                             "data.dedup.lines=false", "data.split.on_leak=error"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: leakage: ") and "Traceback" not in result.stderr
    assert "most leaked: " in errors[0] and "data.dedup.paragraphs=true" in errors[0]
    assert not list((tmp_path / "out" / "data").iterdir())  # no folder, finished or not


def test_decontaminate_cuts_the_evaluation_text_and_says_so(tmp_path):
    from lightning_llm.errors import UserError

    rng = random.Random(5)
    (tmp_path / "files").mkdir()
    texts = [random_text(rng, 300) for _ in range(30)]
    for i, text in enumerate(texts):
        (tmp_path / "files" / f"d{i:02d}.txt").write_text(text)
    lines = texts[7].splitlines()
    question = " ".join(lines[10:13])  # 30 words of d07, the lines 10-12
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": question, "answer": "yes"}) + "\n")
    (tmp_path / "eval.txt").write_text(texts[20])  # all of d20
    prepared, report = prepare_files(tmp_path / "files", tmp_path / "cache",
                                     decontaminate=[str(tmp_path / "eval.jsonl"), str(tmp_path / "eval.txt")])
    decon = report["clean"]["decontaminated"]
    assert decon["documents_changed"] == 2 and decon["documents_dropped"] == 1  # d20 had nothing left
    assert decon["lines_removed"] == 3 + len(texts[20].splitlines())
    assert [f["texts_too_short"] for f in decon["files"]] == [1, 0]  # "yes" has no 13-gram
    index = {d["id"]: d for d in map(json.loads, (prepared.dir / "documents.jsonl").read_text().splitlines())}
    assert str(tmp_path / "files" / "d20.txt") not in index
    assert report["clean"]["dropped"]["decontaminated"]["count"] == 1
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_path))
    row = index[str(tmp_path / "files" / "d07.txt")]
    kept = tokenizer.decode(prepared.tokens(row["split"])[row["start"]:row["end"]].tolist())
    assert kept == "\n".join(lines[:10] + lines[13:]) + "\n"
    assert "### Decontamination" in (prepared.dir / "report.md").read_text()
    with pytest.raises(UserError, match="data.decontaminate: nothing at"):
        prepare_files(tmp_path / "files", tmp_path / "cache", decontaminate=[str(tmp_path / "missing.txt")])


def test_builtin_corpus_is_untouched_by_line_dedup_and_containment(prepared):
    report = json.loads((prepared.dir / "report.json").read_text())
    spans = report["clean"]["repeated_lines"]
    assert spans["lines"] and spans["paragraphs"] and spans["chars_removed"] == 0 and spans["hashes_held"] > 30_000
    assert report["containment"]["pairs"] == 0
    assert report["leakage"]["gate"] == {"max_leakage": 0.05, "on_leak": "warn", "split": "test",
                                         "share": report["leakage"]["grouped"]["test"]["share"], "passed": True}
