import hashlib
import importlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict

import pytest
from tokenizers import Tokenizer

from lightning_llm.data import CleanConfig, DataConfig, SourceConfig, SplitConfig, TokenizerConfig, prepare
from lightning_llm.data.clean import transform
from lightning_llm.data.shakespeare import read_shakespeare
from lightning_llm.data.sources import Skipped, read_source

_rng = random.Random(0)
VOCABULARY = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 8)))
              for _ in range(2000)]


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) for _ in range(n)]


def write_prose(folder, count: int, seed: int = 0) -> list:
    """`count` text files of 30 distinct lines of 10 words each: they pass every default filter."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        lines = [" ".join(words(10, seed * 10_000 + i * 100 + n)) for n in range(30)]
        paths.append(folder / f"doc{i:02d}.txt")
        paths[-1].write_text("\n".join(lines) + "\n")
    return paths


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
    a, b = write_prose(tmp_path, 2)
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "*.txt")], workers=1,
                      split=SplitConfig(val=0.0, test=0.0))
    first = prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache")
    assert prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache").dir == first.dir
    b.write_text(b.read_text() + "one more line of words\n")
    assert prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache").dir != first.dir


def test_an_interrupted_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    a, = write_prose(tmp_path, 1)
    data = DataConfig(name="files", source="text_files", paths=[str(a)], workers=1,
                      split=SplitConfig(val=0.0, test=0.0))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("lightning_llm.data.pipeline"), "write_report", interrupted)
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

    from lightning_llm.config import to_dataclass
    from lightning_llm.errors import UserError

    for overrides, message in ((["data=text_files"], "needs paths"),
                               (["data.dedup.near.action=merge"], "group or drop"),
                               (["data.clean.unicode_form=NFX"], "unicode_form"),
                               (["+data.clean.strip_html=true"], "strip_html")):
        with pytest.raises(UserError, match=message):
            to_dataclass(DataConfig, compose_config("prepare", overrides).data, "data")


# ---- one set of defaults: the YAML under conf/ and the dataclasses say the same -------------------------

# The keys each source kind reads: its preset (conf/data/<kind>.yaml) lists them, so each can be overridden.
KIND_KEYS = {"shakespeare": {"editions"}, "text_files": {"paths", "extensions"},
             "jsonl": {"paths", "extensions", "text_field", "id_field"},
             "hf": {"dataset", "subset", "dataset_split", "streaming", "text_field", "id_field"}}


def flat_keys(node: dict, prefix: str = "") -> set[str]:
    return {k for key, value in node.items()
            for k in (flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key])}


@pytest.mark.parametrize("overrides, expected", [
    ([], DataConfig()),
    (["data=shakespeare_mix"], DataConfig(name="shakespeare_mix", editions=["gutenberg"],
                                          mix={"folio": SourceConfig(editions=["folio"], weight=0.5)})),
    (["data=text_files", "data.paths=[notes/]"], DataConfig(name="text_files", source="text_files", paths=["notes/"])),
    (["data=jsonl", "data.paths=[a.jsonl]"], DataConfig(name="jsonl", source="jsonl", paths=["a.jsonl"])),
    (["data=hf", "data.dataset=some/dir"], DataConfig(name="hf", source="hf", dataset="some/dir")),
])
def test_composed_data_configs_are_the_dataclass_defaults(overrides, expected):
    """`llm prepare data=X` and `DataConfig(...)` in a notebook build the same folder: same config,
    same cache key; and the YAML lists every knob, so none needs a '+' to be overridden."""
    from conftest import compose_config
    from omegaconf import OmegaConf

    from lightning_llm.config import to_dataclass
    from lightning_llm.data.pipeline import cache_key

    node = OmegaConf.to_container(compose_config("prepare", overrides).data, resolve=True)
    composed = to_dataclass(DataConfig, node, "data")
    assert asdict(composed) == asdict(expected)
    assert cache_key(composed, TokenizerConfig()) == cache_key(expected, TokenizerConfig())  # 3 vs 3.0 would differ
    source_fields = set(asdict(SourceConfig()))
    knobs = flat_keys({k: v for k, v in asdict(expected).items() if k not in source_fields | {"mix"} or k == "weight"})
    assert knobs | {"name", "source"} | KIND_KEYS[expected.source] <= flat_keys(node)


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_composed_tokenizer_configs_are_the_dataclass_defaults(kind):
    from conftest import compose_config
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(compose_config("prepare", [f"tokenizer={kind}"]).tokenizer)
    assert node == asdict(TokenizerConfig(kind=kind))  # key for key, value for value
    if kind == "char":
        assert node == asdict(TokenizerConfig())  # llm prepare's default


def test_the_step_dataclasses_hold_conf_data_defaults_yaml():
    from omegaconf import OmegaConf

    from lightning_llm.config import CONF_DIR
    from lightning_llm.data import DedupConfig, LeakageConfig

    defaults = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/data/_defaults.yaml"))
    assert defaults == {"weight": SourceConfig().weight, "mix": {}, "workers": DataConfig().workers,
                        "max_document_chars": DataConfig().max_document_chars, "clean": asdict(CleanConfig()),
                        "decontaminate": DataConfig().decontaminate,
                        "dedup": asdict(DedupConfig()), "split": asdict(SplitConfig()),
                        "leakage": asdict(LeakageConfig())}


@pytest.mark.parametrize("overrides, message", [
    (["data.workers=-1"], "data.workers must be 0 (one per core) or more, got -1"),
    (["data.max_document_chars=0"], "data.max_document_chars must be at least 1, got 0"),
    (["data.split.val=2"], "data.split.val (2.0) and data.split.test (0.1) must be"),
    (["data.dedup.near.threshold=3"], "data.dedup.near.threshold must be in (0, 1], got 3.0"),
    (["data.clean.unicode_form=NFX"], "data.clean.unicode_form must be one of"),
    (["data.leakage.ngram=0"], "data.leakage.ngram and data.leakage.max_hashes must be at least 1"),
    (["data.dedup.min_line_chars=0"], "data.dedup.min_line_chars and data.dedup.max_hashes must be at least 1"),
    (["data.split.containment=0"], "data.split.containment must be in (0, 1] or null, got 0.0"),
    (["data.split.max_leakage=5"], "data.split.max_leakage must be in [0, 1] or null, got 5.0"),
    (["data.split.on_leak=stop"], "data.split.on_leak must be warn or error, got 'stop'"),
    (["data.source=csv"], "data: source 'csv' is not known"),
    (["+data.mix.extra={source:jsonl}"], "data.mix.extra: a jsonl source needs paths="),
    (["+data.mix._extra={source:shakespeare}"], "data.mix: '_extra' must be letters"),
    (["data.name=.hidden"], "data.name: '.hidden' must be letters"),
    (["tokenizer=bpe", "tokenizer.vocab_size=100"], "tokenizer.vocab_size: a byte-level BPE vocabulary needs"),
])
def test_config_errors_name_the_setting_once(overrides, message):
    from conftest import compose_config

    from lightning_llm.config import to_dataclass
    from lightning_llm.errors import UserError
    from lightning_llm.stages.prepare import data_config

    cfg = compose_config("prepare", overrides)
    with pytest.raises(UserError) as caught:
        data_config(cfg)
        to_dataclass(TokenizerConfig, cfg.tokenizer, "tokenizer")
    text = str(caught.value)
    assert text.startswith(message), text
    assert "data: data" not in text and "tokenizer: tokenizer" not in text


# ---- reliability: inputs and interruptions that must not hang, blow up or leave things behind ----------


@pytest.fixture
def deadline():
    """Fail a test that blocks (say, on a named pipe) instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_named_pipe_among_the_sources_is_skipped_and_counted(tmp_path, deadline):
    write_prose(tmp_path / "corpus", 10)
    os.mkfifo(tmp_path / "corpus" / "pipe.txt")  # opening it for reading would wait for a writer forever
    os.mkfifo(tmp_path / "records.jsonl")
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "corpus")], workers=1)
    prepared = prepare(data, TokenizerConfig(), tmp_path / "cache")
    report = json.loads((prepared.dir / "report.json").read_text())
    assert report["read"]["skipped"] == {"not a regular file": {
        "count": 1, "examples": [f"{tmp_path}/corpus/pipe.txt (named pipe)"]}}
    assert report["read"]["sources"]["files"]["documents"] == 10
    assert "| not a regular file | 1 |" in (prepared.dir / "report.md").read_text()
    skipped = Skipped()
    assert list(read_source("r", SourceConfig(source="jsonl", paths=[str(tmp_path / "records.jsonl")]), skipped)) == []
    assert skipped.count == {"not a regular file": 1}


def test_a_large_text_file_is_read_in_pieces_with_bounded_memory(tmp_path):
    path = tmp_path / "one_line.txt"
    with open(path, "w") as f:  # 6 MB on one line
        for seed in range(100):
            f.write(" ".join(words(10_000, seed)) + " ")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    source, skipped, digest, lengths, parts = SourceConfig(source="text_files", paths=[str(path)]), Skipped(), \
        hashlib.sha256(), [], []
    tracemalloc.start()
    for doc in read_source("big", source, skipped, max_chars=50_000):
        digest.update(doc.text.encode())
        lengths.append(len(doc.text))
        parts.append((doc.id, doc.part, doc.origin))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_500_000, f"reading a 6 MB line peaked at {peak / 1e6:.1f} MB"  # whole: 12 MB (bytes and text)
    assert digest.hexdigest() == expected and not skipped.count  # the pieces spell the file exactly
    assert max(lengths) <= 50_000 and min(lengths[:-1]) > 25_000  # cut at a space in each piece's second half
    assert parts == [(f"{path}#part{k}", k, str(path)) for k in range(1, len(parts) + 1)]

    lines = "".join(" ".join(words(8, n)) + "\n" for n in range(20_000))  # many lines: cut after a line break
    pieces = [d.text for d in read_source("j", SourceConfig(source="jsonl", paths=[str(_jsonl(tmp_path, lines))]),
                                          skipped, max_chars=50_000)]
    assert "".join(pieces) == lines and all(p.endswith("\n") and len(p) <= 50_000 for p in pieces)

    broken = tmp_path / "broken" / "late_error.txt"  # invalid UTF-8 far into a large file: the whole file is skipped
    broken.parent.mkdir()
    broken.write_bytes(path.read_bytes()[:3_000_000] + b"\xff tail")
    assert list(read_source("b", SourceConfig(source="text_files", paths=[str(broken)]), skipped, 50_000)) == []
    assert skipped.examples["invalid UTF-8"] == [f"{broken} (byte 3000000)"]


def _jsonl(folder, text):
    path = folder / "one.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    return path


def test_a_long_document_becomes_pieces_counted_in_the_card_and_kept_in_one_split(tmp_path):
    write_prose(tmp_path / "corpus", 12)
    big = tmp_path / "corpus" / "big.txt"
    big.write_text(" ".join(words(400_000, 99)) + "\n")  # one line of 2.4 MB
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "corpus")], workers=1,
                      max_document_chars=100_000)
    prepared = prepare(data, TokenizerConfig(), tmp_path / "cache")
    report = json.loads((prepared.dir / "report.json").read_text())
    long_documents = report["read"]["long_documents"]
    pieces = [d for d in documents(prepared) if d["origin"] == str(big)]
    assert long_documents == {"max_document_chars": 100_000, "documents": 1, "pieces": len(pieces),
                              "examples": [str(big)]} and len(pieces) >= 24
    assert [(d["id"], d["part"]) for d in pieces] == [(f"{big}#part{k}", k) for k in range(1, len(pieces) + 1)]
    assert len({d["split"] for d in pieces}) == 1  # one group: the pieces never straddle splits
    assert max(d["end"] - d["start"] for d in pieces) <= 100_000  # char tokens: one per character
    assert "were cut into" in (prepared.dir / "report.md").read_text()


KILLED_BUILD = """
import os, signal, sys, time
from pathlib import Path
from lightning_llm.data import DataConfig, TokenizerConfig, pipeline

def stop_here(*args, **kwargs):
    Path(sys.argv[3]).write_text("building")
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would, in the middle of the build
    time.sleep(600)

pipeline.write_report = stop_here
data = DataConfig(name=sys.argv[5], source="text_files", paths=[sys.argv[1]], workers=1)
pipeline.prepare(data, TokenizerConfig(), sys.argv[2])
"""


def test_a_build_left_by_a_killed_process_is_removed_and_a_live_one_is_kept(tmp_path):
    write_prose(tmp_path / "corpus", 10)
    cache = tmp_path / "cache"

    def start(mode: str, name: str) -> subprocess.Popen:
        marker = tmp_path / f"{name}.started"
        proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tmp_path / "corpus"), str(cache), str(marker),
                                 mode, name])
        started = time.time()
        while not marker.exists():
            assert proc.poll() in (None, -signal.SIGKILL) and time.time() - started < 120
            time.sleep(0.1)
        return proc

    killed, live = start("kill", "killed"), start("sleep", "live")
    try:
        assert killed.wait(timeout=60) == -signal.SIGKILL
        building = sorted(p.name for p in cache.iterdir())
        assert [n.split("-")[0] for n in building] == [".killed", ".live"]  # two half-built folders
        data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "corpus")], workers=1)
        prepare(data, TokenizerConfig(), cache)
        left = sorted(p.name for p in cache.iterdir() if p.name.startswith("."))
        assert len(left) == 1 and left[0].startswith(".live-") and f"-{live.pid}-" in left[0]
    finally:
        live.kill()
        live.wait()
    prepare(DataConfig(name="again", source="text_files", paths=[str(tmp_path / "corpus")], workers=1),
            TokenizerConfig(), cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_prepared_folders_follow_the_umask(tmp_path):
    write_prose(tmp_path / "corpus", 10)
    old = os.umask(0o027)
    try:
        prepared = prepare(DataConfig(name="files", source="text_files", paths=[str(tmp_path / "corpus")], workers=1),
                           TokenizerConfig(), tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(prepared.dir.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in prepared.dir.iterdir()} == {0o640}
