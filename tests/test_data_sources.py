"""Each source kind, each kind of bad input, and mixtures: everything local, nothing on the network."""

import json
import logging

import pytest

from lightning_llm.data import CleanConfig, DataConfig, SourceConfig, SplitConfig, TokenizerConfig, prepare
from lightning_llm.data.sources import Skipped, read_source
from lightning_llm.errors import UserError

PROSE = "Now is the winter of our discontent made glorious summer by this sun of York.\n"
# These tests are about reading: documents of one line, or one line repeated, pass the filters.
LENIENT = CleanConfig(min_chars=10, min_words=None, max_symbol_ratio=None, min_mean_word_length=None,
                      max_mean_word_length=None, max_repeated_line_chars=None)


def read(config: SourceConfig):
    skipped = Skipped()
    docs = list(read_source("src", config, skipped))
    return docs, skipped


def test_text_files_from_directories_globs_and_files_with_bad_ones_skipped(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text(PROSE)
    (tmp_path / "corpus" / "sub" / "b.md").write_text(PROSE * 2)
    (tmp_path / "corpus" / "ignored.csv").write_text(PROSE)  # not a text extension: not read from a directory
    (tmp_path / "corpus" / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00 zip header")
    (tmp_path / "corpus" / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    (tmp_path / "corpus" / "empty.txt").write_text(" \n\n")
    (tmp_path / "corpus" / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    (tmp_path / "extra.txt").write_text(PROSE)
    config = SourceConfig(source="text_files", paths=[str(tmp_path / "corpus"), str(tmp_path / "e*.txt"),
                                                      str(tmp_path / "missing.txt")])
    docs, skipped = read(config)
    assert [d.id.removeprefix(str(tmp_path) + "/") for d in docs] == ["corpus/a.txt", "corpus/sub/b.md", "extra.txt"]
    assert docs[1].meta == {"dir": str(tmp_path / "corpus" / "sub"), "file": "b.md"} and docs[1].source == "src"
    assert skipped.count == {"binary file": 1, "invalid UTF-8": 1, "empty file": 1, "unreadable path": 1,
                             "missing path": 1}
    assert skipped.examples["invalid UTF-8"] == [f"{tmp_path}/corpus/latin1.txt (byte 3)"]


def test_jsonl_records_with_metadata_and_every_bad_line_counted_with_its_line(tmp_path):
    lines = [json.dumps({"text": PROSE, "genre": "history", "id": "r3"}), "", "{not json",
             json.dumps(["a", "list"]), json.dumps({"body": "no text field"}), json.dumps({"text": 42}),
             '{"text": "lone \\ud800 surrogate"}', json.dumps({"text": PROSE + "2", "genre": "comedy", "id": "r3"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "c.jsonl").write_bytes(b"\x00\x00binary")
    docs, skipped = read(SourceConfig(source="jsonl", paths=[str(tmp_path)], id_field="id"))
    assert [(d.id, d.meta) for d in docs] == [("r3", {"genre": "history"}), ("r3", {"genre": "comedy"})]
    assert docs[0].origin == f"{tmp_path}/a.jsonl:1"
    assert skipped.count == {"line is not JSON": 1, "record is not a JSON object": 1,
                             "record without the text field": 1, "text field is not a string": 1,
                             "invalid UTF-8": 1, "empty file": 1, "binary file": 1}
    assert skipped.examples["line is not JSON"][0].startswith(f"{tmp_path}/a.jsonl:3 ")
    docs, _ = read(SourceConfig(source="jsonl", paths=[str(tmp_path / "a.jsonl")]))
    assert docs[0].id == f"{tmp_path}/a.jsonl:1" and docs[0].meta == {"genre": "history", "id": "r3"}


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_dataset_from_a_local_directory(tmp_path, streaming):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds").mkdir()
    table = pa.table({"content": [PROSE, None, PROSE + "again"], "label": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "ds" / "train.parquet")
    docs, skipped = read(SourceConfig(source="hf", dataset=str(tmp_path / "ds"), text_field="content",
                                      streaming=streaming))
    assert [(d.text, d.meta) for d in docs] == [(PROSE, {"label": "a"}), (PROSE + "again", {"label": "c"})]
    assert docs[0].id == f"{tmp_path}/ds[0]"
    assert skipped.count == {"record without the text field": 1}


def test_one_warning_line_per_kind(tmp_path, caplog):
    for i in range(3):
        (tmp_path / f"empty{i}.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00")
    _, skipped = read(SourceConfig(source="text_files", paths=[str(tmp_path)]))
    with caplog.at_level(logging.WARNING):
        skipped.warn()
    messages = sorted(record.message for record in caplog.records)
    assert len(messages) == 2
    assert messages[0].startswith("skipped 1 x binary file: ") and messages[1].startswith("skipped 3 x empty file: ")


def test_repeated_ids_are_made_unique(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": "same", "text": f"{i} " + PROSE}) + "\n"
                                              for i in range(3)))
    data = DataConfig(name="ids", source="jsonl", paths=[str(tmp_path / "a.jsonl")], id_field="id", workers=1,
                      split=SplitConfig(val=0, test=0), clean=LENIENT)
    data.dedup.near.enabled = False
    prepared = prepare(data, TokenizerConfig(), tmp_path / "cache")
    index = [json.loads(line) for line in (prepared.dir / "documents.jsonl").read_text().splitlines()]
    assert [d["id"] for d in index] == ["same", "same#2", "same#3"]


def test_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{oops\n" + json.dumps({"other": "field"}) + "\n")
    data = DataConfig(name="bad", source="jsonl", paths=[str(tmp_path / "bad.jsonl")], workers=1)
    with pytest.raises(UserError, match=r"no usable documents in data 'bad' \(1 line is not JSON, "
                                        r"1 record without the text field\)"):
        prepare(data, TokenizerConfig(), tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").iterdir()] == []


def test_config_checks():
    with pytest.raises(ValueError, match="needs paths"):
        SourceConfig(source="jsonl")
    with pytest.raises(ValueError, match="needs dataset"):
        SourceConfig(source="hf")
    with pytest.raises(ValueError, match="not known"):
        SourceConfig(source="csv")
    with pytest.raises(ValueError, match="weight"):
        SourceConfig(weight=0)


def test_a_mixture_prefixes_ids_and_weights_the_train_split(tmp_path):
    records = [{"text": f"Document {i}: " + PROSE * 3, "topic": "a" if i % 2 else "b"} for i in range(40)]
    (tmp_path / "main.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "notes").mkdir()
    for i in range(20):
        (tmp_path / "notes" / f"n{i}.txt").write_text(f"Note {i}. " + PROSE * 4)
    data = DataConfig(name="mixed", source="jsonl", paths=[str(tmp_path / "main.jsonl")], workers=1,
                      mix={"notes": SourceConfig(source="text_files", paths=[str(tmp_path / "notes")], weight=2.0)},
                      split=SplitConfig(stratify_by="source"), clean=LENIENT)
    data.dedup.near.enabled = False  # the documents differ by their number only
    prepared = prepare(data, TokenizerConfig(), tmp_path / "cache")
    index = [json.loads(line) for line in (prepared.dir / "documents.jsonl").read_text().splitlines()]
    assert {d["source"] for d in index} == {"mixed", "notes"}
    assert all(d["id"].startswith(d["source"] + "/") for d in index)
    train_notes = [d["id"] for d in index if d["split"] == "train" and d["source"] == "notes"]
    assert len(train_notes) == 2 * len(set(train_notes)) > 0  # weight 2: each train note twice
    held_out = [d["id"] for d in index if d["split"] != "train"]
    assert len(held_out) == len(set(held_out)) and {i.split("/")[0] for i in held_out} == {"mixed", "notes"}
    assert prepared.meta["splits"]["train"]["documents"] == len([d for d in index if d["split"] == "train"])
