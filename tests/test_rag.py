"""RAG: `llm index` over a tiny folder whose answer passages are known; citations point at the right
file and lines; only files under the folder are read; a missing, empty or tampered index fails in one
line; a live `llm serve ... rag.index=<name>` returns citations, streamed (first chunk) and not."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import llm, llm_env
from tokenizers import Tokenizer

from lightning_llm.config import to_dataclass
from lightning_llm.data.clean import CleanConfig
from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import new_manifest, save_artifact
from lightning_llm.rag import ChunkConfig, IndexSettings, build_index, index_dir, load_index
from lightning_llm.rag.passages import chunk, clean_lines

HAMLET = """\
HAMLET, PRINCE OF DENMARK

ACT I. SCENE I. Elsinore. A platform before the Castle.

BERNARDO. Who's there?
FRANCISCO. Nay, answer me: stand, and unfold yourself.
BERNARDO. Long live the King!
FRANCISCO. Bernardo? He.
BERNARDO. You come most carefully upon your hour.
FRANCISCO. For this relief much thanks: 'tis bitter cold, And I am sick at heart.

HORATIO. Tush, tush, 'twill not appear.
MARCELLUS. Peace, break thee off; look where it comes again!
BERNARDO. In the same figure, like the king that's dead, the ghost walks the battlements at midnight.
MARCELLUS. Thou art a scholar; speak to it, Horatio.
HORATIO. Most like: it harrows me with fear and wonder.
"""
TIDES = """\
# Tides

The moon pulls the oceans; twice a day the water rises and falls.

Spring tides come at new and full moon, neap tides at the quarters.
Sailors at Dover read the almanac before they cross.
"""
RECORDS = [{"text": "Bread rises when yeast eats sugar and breathes out gas.", "id": "r1"},
           {"text": "A lighthouse keeper trims the wick of the lantern every evening at dusk.", "id": "r2"}]
SECRET = "The vault combination is written on parchment beneath the orrery."
SETTINGS = IndexSettings(chunk=ChunkConfig(words=20, overlap=5), clean=CleanConfig(
    min_chars=None, min_words=None, max_symbol_ratio=None, min_mean_word_length=None, max_mean_word_length=None,
    max_repeated_line_chars=None))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """docs/ with a play, a markdown note, JSONL records, a binary file, a file of another kind,
    and a link to a file outside docs/ (never to be read)."""
    base = tmp_path_factory.mktemp("rag")
    docs = base / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "hamlet.txt").write_text(HAMLET)
    (docs / "notes" / "tides.md").write_text(TIDES)
    (docs / "records.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    (docs / "blob.txt").write_bytes(b"\x00\x01binary")
    (docs / "readme.rst").write_text("Not a kind the index reads: orrery parchment vault.\n")
    (base / "secret.txt").write_text(SECRET + "\n")
    (docs / "escape.txt").symlink_to(base / "secret.txt")
    return docs


@pytest.fixture(scope="module")
def built(corpus):
    outputs = corpus.parent / "outputs"
    return build_index(docs=str(corpus), name="tiny", output_root=outputs, settings=SETTINGS, progress=False)


def file_lines(path: Path, start: int, end: int) -> str:
    return "\n".join(line for line in path.read_text().split("\n")[start - 1:end] if line.strip())


def test_passages_cite_their_file_and_lines_and_never_cross_documents(corpus, built):
    index = load_index(built.path)
    assert built.meta["files"] == 4 and not built.reused  # hamlet, tides, records; blob.txt is a counted skip
    assert built.skipped.count == {"binary file": 1}
    sources = {p["source"] for p in index.passages}
    assert sources == {"hamlet.txt", "notes/tides.md", "records.jsonl"}
    for p in index.passages:
        start, end = p["lines"]
        if p["source"] == "records.jsonl":  # a record's passages cite the record's line
            assert start == end and p["text"] in RECORDS[start - 1]["text"]
        else:
            assert p["text"] == file_lines(corpus / p["source"], start, end)
    hamlet = [p for p in index.passages if p["source"] == "hamlet.txt"]
    assert hamlet[0]["lines"][0] == 1 and hamlet[-1]["lines"][1] == 16
    assert all(a["lines"][0] < b["lines"][0] <= a["lines"][1] for a, b in zip(hamlet, hamlet[1:]))  # overlap


def test_the_known_answer_comes_first_with_its_lines(corpus, built):
    index = load_index(built.path)
    hits = index.search("where does the ghost walk at midnight", 3)
    line = HAMLET.split("\n").index(next(x for x in HAMLET.split("\n") if "ghost walks" in x)) + 1
    assert hits[0].source == "hamlet.txt" and hits[0].lines[0] <= line <= hits[0].lines[1]
    assert hits[0].score > 0 and hits == sorted(hits, key=lambda h: -h.score)
    top = index.search("lighthouse lantern wick", 1)[0]
    assert (top.source, top.lines) == ("records.jsonl", [2, 2])
    top = index.search("neap tides at Dover", 1)[0]
    assert top.source == "notes/tides.md" and top.lines[0] <= 5 <= top.lines[1]
    assert index.search("zzzz qqqq", 3) == []  # no known word: no passage


def test_a_path_outside_the_folder_is_refused_and_never_read(corpus, built):
    assert built.outside == [str(corpus / "escape.txt")]
    assert built.meta["refused_outside"] == [str(corpus / "escape.txt")]
    index = load_index(built.path)
    assert not any("orrery" in p["text"] for p in index.passages)
    assert index.search("vault combination parchment orrery", 5) == []
    # A passage file that would cite a path outside the folder is refused when the index loads.
    tampered = built.path.parent / "tampered"
    import shutil
    shutil.copytree(built.path, tampered)
    rows = (tampered / "passages.jsonl").read_text().splitlines()
    rows[0] = json.dumps({**json.loads(rows[0]), "source": "../secret.txt"})
    (tampered / "passages.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"line 1: source '../secret.txt' is outside the indexed folder"):
        load_index(tampered)


def test_a_glob_indexes_its_matches_under_its_folder(corpus, tmp_path):
    result = build_index(docs=str(corpus / "**" / "*.md"), name="md", output_root=tmp_path, settings=SETTINGS,
                         progress=False)
    assert result.meta["root"] == str(corpus.resolve())
    assert {p["source"] for p in load_index(result.path).passages} == {"notes/tides.md"}


def test_a_second_build_over_unchanged_files_reuses_the_index(corpus, tmp_path):
    first = build_index(docs=str(corpus), name="again", output_root=tmp_path, settings=SETTINGS, progress=False)
    second = build_index(docs=str(corpus), name="again", output_root=tmp_path, settings=SETTINGS, progress=False)
    assert not first.reused and second.reused and second.meta == first.meta
    note = corpus / "notes" / "tides.md"
    os.utime(note, ns=(note.stat().st_atime_ns, note.stat().st_mtime_ns + 10**9))
    third = build_index(docs=str(corpus), name="again", output_root=tmp_path, settings=SETTINGS, progress=False)
    assert not third.reused and third.meta["fingerprint"] != first.meta["fingerprint"]


def test_cleaning_keeps_line_numbers_and_chunks_overlap_by_whole_lines():
    text = "Title page\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody one\n<<THIS ELECTRONIC VERSION OF X\n" \
           "IS COPYRIGHT>>\nbody  two  \n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence"
    lines = clean_lines(text, CleanConfig())
    assert lines == ["", "", "body one", "", "", "body  two", "", ""]
    numbered = [(n, f"w{n} " * 4) for n in range(1, 11)]  # ten lines of four words
    passages = list(chunk(numbered, ChunkConfig(words=10, overlap=4)))
    assert [(a, b) for a, b, _ in passages] == [(1, 3), (3, 5), (5, 7), (7, 9), (9, 10)]
    assert [(a, b) for a, b, _ in chunk(numbered, ChunkConfig(words=10, overlap=0))] == [(1, 3), (4, 6), (7, 9),
                                                                                      (10, 10)]


def test_a_missing_empty_or_pickled_index_fails_in_one_line(built, tmp_path):
    with pytest.raises(UserError, match=r"rag.index=nothing: no index at .* \(build it with `llm index"):
        load_index(tmp_path / "index" / "nothing")
    empty = tmp_path / "empty"
    import shutil
    shutil.copytree(built.path, empty)
    (empty / "passages.jsonl").write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_index(empty)
    pickled = tmp_path / "pickled"
    shutil.copytree(built.path, pickled)
    np.save(pickled / "bm25" / "data.csc.index.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="does not load .*allow_pickle=False"):
        load_index(pickled)
    with pytest.raises(UserError, match="becomes a folder name"):
        index_dir(tmp_path, "../up")


def test_llm_index_prints_what_it_built_then_reuses_it_and_refuses_bad_input_in_one_line(corpus, tmp_path):
    first = llm(["index", f"docs={corpus}", "name=cli", "chunk.words=20", "chunk.overlap=5"], tmp_path)
    assert re.search(r"index cli: 4 files -> \d+ passages \(20 words, 5 overlap; \d+ terms\) in [\d.]+ s", first.stdout)
    assert f"refused (outside {corpus.resolve()}): {corpus / 'escape.txt'}" in first.stdout
    assert (tmp_path / "index" / "cli" / "index.json").is_file()
    second = llm(["index", f"docs={corpus}", "name=cli", "chunk.words=20", "chunk.overlap=5"], tmp_path)
    assert "index cli: unchanged (4 files" in second.stdout and "reusing" in second.stdout
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "empty.txt").write_text("\n\n")
    bad = llm(["index", f"docs={tmp_path / 'blank'}", "name=x"], tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert f"error: docs={tmp_path / 'blank'}: 1 file under {tmp_path / 'blank'} gave no passages (1 empty file)" \
        in bad.stderr
    for kwargs, message in ((dict(docs="/no/such/folder", name="x"), "is not a folder"),
                            (dict(docs=str(corpus / "*.rst"), name="x"), "no .txt/.md/.jsonl files under"),
                            (dict(docs=str(corpus), name="../x"), "name='../x' becomes a folder name")):
        with pytest.raises(UserError, match=re.escape(message)):
            build_index(**kwargs, output_root=tmp_path, settings=SETTINGS, progress=False)
    with pytest.raises(UserError, match="chunk.overlap must be at least 0 and less than chunk.words"):
        to_dataclass(IndexSettings, {"chunk": {"words": 20, "overlap": 20}}, "index")
    assert not (tmp_path / "index" / "x").exists()


# --- a live server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(corpus, built):
    """`llm serve` with rag.index=tiny on a free port, a random model whose window holds the passages."""
    outputs = corpus.parent / "outputs"
    text = HAMLET + TIDES + " ".join(r["text"] for r in RECORDS) + "SYSTEM USER ASSISTANT DOCUMENTS [] 0123456789-:"
    tokenizer_json = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0), [text]).to_str()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_str(tokenizer_json).get_vocab_size(), block_size=1024, n_layer=1,
                          n_head=2, n_embd=32))
    folder = save_artifact(model, tokenizer_json, corpus.parent / "model",
                           manifest=new_manifest(produced_by="test", tokenizer_json=tokenizer_json))
    log = corpus.parent / "serve.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "lightning_llm.cli", "serve", f"ckpt={folder}", "serve.port=0",
                                 "rag.index=tiny", "serve.max_tokens=8", "serve.default_max_tokens=8"], stdout=handle, stderr=subprocess.STDOUT,
                                env=llm_env(outputs))
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"serving \S+ at (http://[\d.]+:\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def sse_events(response: httpx.Response) -> list:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_a_rag_request_gets_citations_streamed_and_not(server, corpus):
    templates = httpx.get(server + "/v1/templates").json()
    assert templates["rag_index"] == "tiny" and {"name": "plain", "default": True} in templates["data"]
    question = [{"role": "user", "content": "Where does the ghost walk at midnight?"}]
    body = {"messages": question, "rag": {"top_k": 2}, "max_tokens": 4, "temperature": 0}
    whole = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert whole.status_code == 200, whole.text
    citations = whole.json()["citations"]
    assert 1 <= len(citations) <= 2 and set(citations[0]) == {"source", "lines", "score", "text"}
    first = citations[0]
    line = next(i for i, x in enumerate(HAMLET.split("\n"), 1) if "ghost walks" in x)
    assert first["source"] == "hamlet.txt" and first["lines"][0] <= line <= first["lines"][1]
    assert first["text"] == file_lines(corpus / "hamlet.txt", *first["lines"])
    assert isinstance(first["score"], float) and first["score"] > 0
    # The passages were in the prompt: it is longer than the question alone would make it.
    bare = httpx.post(server + "/v1/chat/completions", json={**body, "rag": None}, timeout=60).json()
    assert "citations" not in bare and whole.json()["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 50
    for extra, cache in (({}, "hit"), ({"max_tokens": 3}, "miss")):  # replayed from the cache, and generated
        streamed = httpx.post(server + "/v1/chat/completions", json={**body, **extra, "stream": True}, timeout=60)
        assert streamed.headers["x-cache"] == cache
        events = sse_events(streamed)
        assert events[0]["citations"] == citations
        assert all("citations" not in event for event in events[1:])
    for rag, param in (({"top_k": 11}, "rag.top_k"), ({"top_k": 0}, "rag.top_k"), ({"k": 1}, "rag.k")):
        bad = httpx.post(server + "/v1/chat/completions", json={**body, "rag": rag}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    # A template that asks for retrieval gets it without the rag field.
    grounded = httpx.post(server + "/v1/chat/completions", json={**body, "rag": None, "template": "grounded"},
                          timeout=60).json()
    assert grounded["citations"][0]["source"] == "hamlet.txt" and len(grounded["citations"]) <= 3
    bad = httpx.post(server + "/v1/chat/completions", json={**body, "template": "nope"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "template"


def test_serving_a_missing_index_fails_in_one_line(built, tmp_path):
    bad = llm(["serve", f"ckpt={tmp_path}", "rag.index=nothing"], built.path.parent.parent, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "rag.index=nothing: no index at" in bad.stderr and "llm index docs=<folder> name=nothing" in bad.stderr
