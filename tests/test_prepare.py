import importlib
import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from lightning_llm.data import CleanConfig, DataConfig, SplitConfig, TokenizerConfig, prepare
from lightning_llm.data.clean import transform
from lightning_llm.data.shakespeare import read_shakespeare


def documents(prepared):
    return [json.loads(line) for line in (prepared.dir / "documents.jsonl").read_text().splitlines()]


def test_shards_hold_the_counted_tokens(prepared):
    meta = prepared.meta
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char" and meta["eot_id"] == 0
    eot = meta["eot_id"]
    for split, info in meta["splits"].items():
        tokens = prepared.tokens(split)
        assert len(tokens) == info["tokens"] > 0
        assert int(tokens.max()) < meta["vocab_size"]
        assert int((tokens == eot).sum()) == info["documents"]  # one separator after each document
    total_docs = sum(info["documents"] for info in meta["splits"].values())
    assert total_docs == len(list(read_shakespeare(["gutenberg", "folio"])))


def test_document_index_spans_decode_to_the_cleaned_documents(prepared):
    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_path))
    cleaned = {d.id: transform(d.text, CleanConfig())[0]
               for d in read_shakespeare(["gutenberg", "folio"])}
    index = documents(prepared)
    assert sorted(d["id"] for d in index) == sorted(cleaned)
    for split in ("train", "val", "test"):
        tokens = prepared.tokens(split)
        rows = [d for d in index if d["split"] == split]
        assert rows[0]["start"] == 0 and rows[-1]["end"] + 1 == len(tokens)
        for row in rows:
            assert tokens[row["end"]] == prepared.meta["eot_id"]
            assert set(row["meta"]) == {"work", "title", "edition", "genre"} and row["source"] == "shakespeare"
        if split == "val":  # decoding every document is slow for train: val shows the spans are exact
            for row in rows:
                text = tokenizer.decode(tokens[row["start"]:row["end"]].tolist(), skip_special_tokens=False)
                assert text == cleaned[row["id"]]


def test_report_counts_every_step(prepared):
    report = json.loads((prepared.dir / "report.json").read_text())
    assert report["read"]["sources"]["shakespeare"]["documents"] == 77
    assert report["read"]["skipped"] == {}
    assert report["clean"]["kept"] == 77 and report["clean"]["dropped"] == {}
    assert report["clean"]["changed"]["normalize_whitespace"]["documents"] > 0
    assert sum(s["documents"] for s in report["split"]["splits"].values()) == 77
    for split in ("train", "val", "test"):  # every genre in every split
        assert set(report["split"]["splits"][split]["chars_by_stratum"]) == {"comedy", "history", "poem", "tragedy"}
    assert report["tokenizer"]["splits"]["train"]["unknown_rate"] == 0.0  # the tokenizer saw every train character
    assert 0.5 < report["tokenizer"]["splits"]["val"]["vocab_used"] <= 1
    card = (prepared.dir / "report.md").read_text()
    for section in ("## Cleaning", "### Near-duplicate clusters", "## Splits", "## Leakage check", "## Tokenizer"):
        assert section in card
    assert (prepared.dir / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert not (prepared.dir / "texts.spool").exists()


def test_same_config_reuses_the_folder_and_a_change_rebuilds(prepared, cache_root):
    from conftest import compose_config
    from lightning_llm.stages.prepare import prepared_data

    again = prepared_data(compose_config("prepare", [f"paths.data_cache={cache_root}", "data.workers=1"]))
    assert again.dir == prepared.dir  # the number of workers does not change the result
    assert (prepared.dir / "meta.json").stat().st_mtime == (again.dir / "meta.json").stat().st_mtime

    gutenberg_only = DataConfig(editions=["gutenberg"], split=SplitConfig(seed=7, group_by="work"))
    other = prepare(gutenberg_only, TokenizerConfig(kind="char"), cache_root)
    assert other.dir != prepared.dir
    assert other.meta["splits"]["train"]["tokens"] < prepared.meta["splits"]["train"]["tokens"]
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]  # no half-built folder left


def test_a_changed_source_file_rebuilds(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta gamma delta\n" * 20)
    (tmp_path / "b.txt").write_text("one two three four\n" * 20)
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "*.txt")], workers=1,
                      split=SplitConfig(val=0.0, test=0.0))
    first = prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache")
    assert prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache").dir == first.dir
    (tmp_path / "b.txt").write_text("one two three four five\n" * 20)
    assert prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache").dir != first.dir


def test_an_interrupted_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("alpha beta gamma delta\n" * 20)
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "a.txt")], workers=1,
                      split=SplitConfig(val=0.0, test=0.0))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("lightning_llm.data.prepare"), "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert (prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache").dir / "meta.json").exists()


def test_bpe_shards_are_shorter_than_char_shards(prepared, cache_root):
    from conftest import compose_config
    from lightning_llm.stages.prepare import prepared_data

    bpe = prepared_data(compose_config("prepare", [f"paths.data_cache={cache_root}", "tokenizer=bpe",
                                                   "tokenizer.vocab_size=1024"]))
    assert bpe.meta["vocab_size"] == 1024
    assert bpe.meta["splits"]["val"]["bytes_per_token"] > 2 * prepared.meta["splits"]["val"]["bytes_per_token"]
    assert bpe.meta["splits"]["val"]["bytes"] == prepared.meta["splits"]["val"]["bytes"]  # the same split


def test_unigram_tokenizer_end_to_end(tmp_path):
    data = DataConfig(editions=["gutenberg"], workers=1, split=SplitConfig(group_by="work"))
    data.clean.max_chars = 100_000  # the shorter works only: unigram training is slow
    prepared = prepare(data, TokenizerConfig(kind="unigram", vocab_size=500), tmp_path)
    meta = prepared.meta
    assert meta["tokenizer"] == "unigram" and meta["vocab_size"] == 500
    assert 2 < meta["splits"]["train"]["bytes_per_token"] < 6
    report = json.loads((prepared.dir / "report.json").read_text())
    assert report["clean"]["dropped"]["max_chars"]["count"] > 0
    assert 0 <= report["tokenizer"]["splits"]["val"]["unknown_rate"] < 0.01


def test_nothing_usable_is_one_error_line_and_a_nonzero_exit(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02")
    env = {**os.environ, "LLM_OUTPUT_ROOT": str(tmp_path / "out"), "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", "lightning_llm.cli", "prepare", "data=text_files",
                             f"data.paths=[{tmp_path}/empty.txt,{tmp_path}/binary.txt,{tmp_path}/missing.txt]"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no usable documents" in errors[0], result.stderr[-2000:]
    assert "1 empty file" in errors[0] and "1 binary file" in errors[0] and "1 missing path" in errors[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out" / "data").iterdir())  # no folder, finished or not


@pytest.mark.parametrize("overrides, sources", [
    (["data=shakespeare"], {"shakespeare": ("shakespeare", 1.0)}),
    (["data=shakespeare_mix"], {"shakespeare_mix": ("shakespeare", 1.0), "folio": ("shakespeare", 0.5)}),
    (["data=text_files", "data.paths=[notes/]"], {"text_files": ("text_files", 1.0)}),
    (["data=jsonl", "data.paths=[a.jsonl]", "+data.mix.extra={source:hf,dataset:some/dir,weight:2}"],
     {"jsonl": ("jsonl", 1.0), "extra": ("hf", 2.0)}),
    (["data=hf", "data.dataset=some/dir", "tokenizer=unigram"], {"hf": ("hf", 1.0)}),
])
def test_every_data_config_composes_into_a_valid_pipeline_config(overrides, sources):
    from conftest import compose_config
    from lightning_llm.config import to_dataclass

    cfg = compose_config("prepare", overrides)
    data = to_dataclass(DataConfig, cfg.data, "data")
    to_dataclass(TokenizerConfig, cfg.tokenizer, "tokenizer")
    assert {name: (s.source, s.weight) for name, s in data.sources().items()} == sources


def test_config_mistakes_are_one_line_user_errors():
    from conftest import compose_config
    from lightning_llm.errors import UserError
    from lightning_llm.config import to_dataclass

    for overrides, message in ((["data=text_files"], "needs paths"),
                               (["data.dedup.near.action=merge"], "group or drop"),
                               (["data.clean.unicode_form=NFX"], "unicode_form"),
                               (["+data.clean.strip_html=true"], "strip_html")):
        with pytest.raises(UserError, match=message):
            to_dataclass(DataConfig, compose_config("prepare", overrides).data, "data")
