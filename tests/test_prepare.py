import json

import numpy as np

from lightning_llm.data import DataConfig, SplitConfig, TokenizerConfig, prepare
from lightning_llm.data.shakespeare import read_shakespeare


def test_shards_hold_the_counted_tokens(prepared):
    meta = prepared.meta
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char"
    eot = meta["eot_id"]
    for split, info in meta["splits"].items():
        tokens = prepared.tokens(split)
        assert len(tokens) == info["tokens"] > 0
        assert int(tokens.max()) < meta["vocab_size"]
        assert int((tokens == eot).sum()) == info["documents"]  # one separator after each document
    total_docs = sum(info["documents"] for info in meta["splits"].values())
    assert total_docs == len(list(read_shakespeare(["gutenberg", "folio"])))


def test_val_shard_decodes_back_to_the_cleaned_documents(prepared):
    from tokenizers import Tokenizer

    from lightning_llm.data.prepare import clean_documents, CleanConfig
    from lightning_llm.data.split import split_documents

    docs = clean_documents(list(read_shakespeare(["gutenberg", "folio"])), CleanConfig(), {})
    val_docs = split_documents(docs, 0.1, 0.1, 1337, "work", "genre")["val"]
    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_path))
    decoded = tokenizer.decode(prepared.tokens("val").tolist(), skip_special_tokens=False)
    assert decoded == "".join(d.text + "<|endoftext|>" for d in val_docs)


def test_report_counts_every_step(prepared):
    report = json.loads((prepared.dir / "report.json").read_text())
    steps = report["steps"]
    assert steps["read"]["documents"] == 77
    assert steps["clean"]["kept"] == 77
    assert sum(steps["split"][s]["documents"] for s in ("train", "val", "test")) == 77
    assert steps["tokenize"]["train"]["unknown_rate"] == 0.0  # the tokenizer saw every train character


def test_same_config_reuses_the_folder_and_a_change_rebuilds(prepared, cache_root):
    from conftest import compose_config
    from lightning_llm.stages.prepare import prepared_data

    again = prepared_data(compose_config("prepare", [f"paths.data_cache={cache_root}"]))
    assert again.dir == prepared.dir
    assert (prepared.dir / "meta.json").stat().st_mtime == (again.dir / "meta.json").stat().st_mtime

    gutenberg_only = DataConfig(editions=["gutenberg"], split=SplitConfig(seed=7))
    other = prepare(gutenberg_only, TokenizerConfig(kind="char"), cache_root)
    assert other.dir != prepared.dir
    assert other.meta["splits"]["train"]["tokens"] < prepared.meta["splits"]["train"]["tokens"]
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]  # no half-built folder left


def test_bpe_shards_are_shorter_than_char_shards(prepared, cache_root):
    bpe = prepare(DataConfig(), TokenizerConfig(kind="bpe", vocab_size=1024), cache_root)
    assert bpe.meta["vocab_size"] == 1024
    assert bpe.meta["splits"]["val"]["bytes_per_token"] > 2 * prepared.meta["splits"]["val"]["bytes_per_token"]
    np.testing.assert_equal(bpe.meta["splits"]["val"]["bytes"], prepared.meta["splits"]["val"]["bytes"])
