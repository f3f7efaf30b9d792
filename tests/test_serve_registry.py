"""`llm serve registry=<name>` follows the registry's live version, and `llm registry status` reads
its drift metric. One server (tiny random models, a character tokenizer) runs through the module:
v1 live, then v2 promoted under a loop of concurrent clients, then a v3 that does not load, then a
rollback. The tests run in file order on it. Two serving fixes are tested in process at the end."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import compose_config, llm, llm_env, random_model_folder
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.registry import Registry

LLM = [sys.executable, "-m", "lightning_llm.cli"]
TEXT = ("ROMEO: But soft, what light through yonder window breaks?\nJULIET: O Romeo, Romeo, wherefore art thou "
        "Romeo?\nHAMLET: To be, or not to be, that is the question.\nKING RICHARD: A horse! a horse! my kingdom for "
        "a horse!\n0123456789 .,;:!?'-\n")
EVAL_TEXT = "JULIET: Good night, good night! parting is such sweet sorrow."
PROMPTS = ["ROMEO: But soft", "HAMLET: To be, or not to be", "a horse! a horse!", "O Romeo, wherefore art thou",
           "JULIET:", "KING RICHARD: my kingdom"]
NAME = "shakes"


def tokenizer_json() -> str:
    return train_tokenizer(TokenizerConfig(kind="char", vocab_size=0), [TEXT]).to_str()


def vocab_size(tokenizer: str) -> int:
    return Tokenizer.from_str(tokenizer).get_vocab_size()


def mean_loss(folder: Path, texts: list[str]) -> float:
    """Mean NLL per token (nats) of the texts, each scored from its first token, computed directly."""
    artifact = load_artifact(folder)
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([artifact.tokenizer.encode(text).ids])
            _, loss = artifact.model(ids[:, :-1], targets=ids[:, 1:])
            nats += loss.item() * (ids.size(1) - 1)
            tokens += ids.size(1) - 1
    return nats / tokens


def run_dir(path: Path, seed: int, tokenizer: str) -> Path:
    """A finished run's dir: model/ and a run.json whose best_val/loss is the model's loss on EVAL_TEXT."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size(tokenizer), block_size=256, n_layer=2, n_head=2, n_embd=64)
    save_artifact(GPT(config), tokenizer, path / "model", manifest=new_manifest(produced_by="test",
                                                                               tokenizer_json=tokenizer))
    metrics = {"best_val/loss": round(mean_loss(path / "model", [EVAL_TEXT]), 6)}
    (path / "run.json").write_text(json.dumps({"metrics": metrics}))
    return path


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {f"{s.name}{json.dumps(s.labels, sort_keys=True) if s.labels else ''}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def served(metrics: dict[str, float], version: str, name: str) -> float:
    return metrics.get(f'{name}{{"registry": "{NAME}", "version": "{version}"}}', 0.0)


def health(url: str) -> dict:
    return httpx.get(url + "/health").json()


def wait_for(condition, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The output root with registry `shakes` (v1 live), v2's run dir, and a server following it."""
    root = tmp_path_factory.mktemp("follow")
    outputs, tokenizer = root / "outputs", tokenizer_json()
    runs = {version: run_dir(root / version, seed, tokenizer) for seed, version in enumerate(["v1", "v2"])}
    registry = Registry(outputs, NAME)
    registry.promote(source=runs["v1"], reason="first")
    log = root / "serve.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(LLM + ["serve", f"registry={NAME}", "serve.port=0", "serve.registry_poll=0.2",
                                       "serve.cache_size=0", "serve.max_tokens=200"],
                                stdout=handle, stderr=subprocess.STDOUT, env=llm_env(outputs))
    try:
        wait_for(lambda: re.search(r"serving \S+ at (http://[\d.]+:\d+)/v1", log.read_text()), "the start", log,
                 timeout=180)
        url = re.search(r"serving \S+ at (http://[\d.]+:\d+)/v1", log.read_text()).group(1)
        yield {"root": root, "outputs": outputs, "runs": runs, "registry": registry, "url": url, "log": log,
               "proc": proc}
    finally:
        proc.terminate()
        proc.wait(60)


def test_a_promotion_switches_the_server_with_no_failed_request(world):
    url, log, registry = world["url"], world["log"], world["registry"]
    assert health(url) == {"status": "ok", "model": NAME, "registry": NAME, "version": "v1"}
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    results: list[tuple[int, str, int]] = []  # (thread, version, tokens)
    failures: list[str] = []
    stop = threading.Event()

    def loop(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                raw = client.completions.with_raw_response.create(
                    model=NAME, prompt=PROMPTS[(worker + i) % len(PROMPTS)], max_tokens=40 + 10 * worker,
                    stream=i % 2 == 0)
                if i % 2 == 0:
                    chunks = list(raw.parse())
                    finish = chunks[-1].choices[0].finish_reason
                else:
                    finish = raw.parse().choices[0].finish_reason
                assert finish in ("stop", "length"), finish
                results.append((worker, raw.headers["x-model-version"], i))
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                failures.append(f"worker {worker} request {i}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 12 or failures, "12 answers from v1", log)
        registry.promote(source=world["runs"]["v2"], reason="a better one")
        wait_for(lambda: health(url)["version"] == "v2", "the switch to v2", log)
        wait_for(lambda: {w for w, version, _ in results if version == "v2"} == set(range(6)) or failures,
                 "an answer from v2 to every client", log)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures
    for worker in range(6):  # each client saw v1, then v2, never v1 again
        seen = [version for w, version, _ in results if w == worker]
        assert seen == sorted(seen) and seen[0] == "v1" and seen[-1] == "v2", seen
    text = log.read_text()
    switched = re.search(r"registry shakes: serving v2 \(was v1; it finishes its (\d+) running requests\)", text)
    assert switched and int(switched.group(1)) >= 1, text[-3000:]  # requests were running on v1 at the switch
    wait_for(lambda: "registry shakes: v1 drained and released" in log.read_text(), "v1's release", log)
    metrics = scrape(url)
    assert served(metrics, "v2", "llm_live_version") == 1 and served(metrics, "v1", "llm_live_version") == 0
    assert not [k for k, v in metrics.items() if k.startswith("llm_request_errors_total") and v]


def test_the_drift_metric_is_the_mean_prompt_loss_of_the_live_model(world):
    url = world["url"]
    before = scrape(url)
    for prompt in PROMPTS:
        answer = httpx.post(url + "/v1/completions", json={"model": NAME, "prompt": prompt, "max_tokens": 1})
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "v2"
    after = scrape(url)
    nats = served(after, "v2", "llm_prompt_loss_nats_total") - served(before, "v2", "llm_prompt_loss_nats_total")
    tokens = served(after, "v2", "llm_prompt_loss_tokens_total") - served(before, "v2", "llm_prompt_loss_tokens_total")
    prompts = served(after, "v2", "llm_prompt_loss_count") - served(before, "v2", "llm_prompt_loss_count")
    assert prompts == len(PROMPTS) and tokens == sum(len(p) - 1 for p in PROMPTS)  # a character tokenizer
    assert nats / tokens == pytest.approx(mean_loss(world["runs"]["v2"] / "model", PROMPTS), rel=1e-4)
    assert served(after, "v1", "llm_prompt_loss_tokens_total") > 0  # v1's answers stay counted under v1


def test_llm_registry_status_compares_served_and_eval_loss(world):
    url, outputs = world["url"], world["outputs"]
    metrics = scrape(url)
    mean = served(metrics, "v2", "llm_prompt_loss_nats_total") / served(metrics, "v2", "llm_prompt_loss_tokens_total")
    _, evaluated = world["registry"].eval_loss("v2")
    gap = mean - evaluated
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    runs = {label: subprocess.Popen(LLM + ["registry", "status", f"name={NAME}", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=llm_env(outputs))
            for label, args in {"drift": [f"url={url}", "drift.min_tokens=1", f"drift.threshold={gap - 0.05:.4f}"],
                                "fine": [f"url={url}", "drift.min_tokens=1", f"drift.threshold={gap + 0.05:.4f}"],
                                "early": [f"url={url}", "drift.min_tokens=100000000"],
                                "gone": [f"url=http://127.0.0.1:{closed}"]}.items()}
    out = {label: run.communicate(timeout=120) + (run.returncode,) for label, run in runs.items()}
    stdout, stderr, code = out["drift"]
    assert code == 0, stderr
    row = next(line for line in stdout.splitlines() if line.startswith("| v2"))
    assert "(live, served)" in row and f"{evaluated:.4f}" in row and f"{mean:.4f}" in row and f"{gap:+.4f}" in row
    assert f"drift: served prompts' loss is {gap:.2f} nats above eval: an update is due" in stdout
    assert "no drift" in out["fine"][0] and "too early to tell" in out["early"][0]
    stdout, stderr, code = out["gone"]
    assert code == 2 and stderr.startswith("error: cannot reach the server at http://127.0.0.1:")
    assert len(stderr.strip().splitlines()) == 1


def test_a_version_that_fails_to_load_keeps_the_old_one_and_a_rollback_switches_back(world):
    url, log, registry = world["url"], world["log"], world["registry"]
    broken = world["root"] / "v3"
    shutil.copytree(world["runs"]["v2"], broken)
    (broken / "model" / "model.safetensors").write_bytes(b"not safetensors")
    registry.promote(source=broken, reason="broken weights")
    wait_for(lambda: "registry shakes: cannot switch to v3" in log.read_text(), "the refusal", log)
    assert health(url)["version"] == "v2"
    answer = httpx.post(url + "/v1/completions", json={"model": NAME, "prompt": "ROMEO:", "max_tokens": 4})
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "v2"
    assert len([ln for ln in log.read_text().splitlines() if "cannot switch to v3" in ln]) == 1  # said once
    assert registry.rollback(reason="v3 is broken") == "v2"  # live again: nothing to switch
    assert registry.rollback(reason="back to the first") == "v1"
    wait_for(lambda: health(url)["version"] == "v1", "the rollback's switch to v1", log)
    answer = httpx.post(url + "/v1/completions", json={"model": NAME, "prompt": "ROMEO:", "max_tokens": 4})
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "v1"


# --- two serving fixes, in process ------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_service(tmp_path_factory):
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    folder = random_model_folder(tmp_path_factory.mktemp("hangup") / "model", tokenizer_json(), block_size=512,
                                 n_layer=4, n_head=4, n_embd=128, position="rope")
    service = Service(load_artifact(folder), ServeSettings(ckpt=str(folder), max_tokens=500, cache_size=0))
    service.start()
    yield service
    service.stop()


def test_a_client_that_hangs_up_on_a_non_streamed_request_is_counted_as_499(slow_service):
    from lightning_llm.serving.app import create_app

    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 500, "temperature": 0}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    sent: list[dict] = []
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(0.05)  # the client waits a moment, then hangs up
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    start = time.perf_counter()
    asyncio.run(create_app(slow_service)(scope, receive, send))
    assert time.perf_counter() - start < 5
    assert sent[0]["status"] == 499
    metrics = {f"{s.name}{s.labels if s.labels else ''}": s.value
               for f in text_string_to_metric_families(slow_service.metrics.render().decode()) for s in f.samples}
    assert metrics["llm_requests_total{'endpoint': '/v1/completions', 'status': '499'}"] == 1
    assert not any("'503'" in key for key in metrics)
    assert metrics["llm_generated_tokens_total"] < 500  # the generation stopped when the client left


def test_serving_a_rag_index_reads_it_once(tmp_path, monkeypatch):
    import lightning_llm.rag as rag
    import lightning_llm.serving.server as server
    from lightning_llm.data.clean import CleanConfig
    from lightning_llm.rag import ChunkConfig, IndexSettings, build_index
    from lightning_llm.stages.serve import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "play.txt").write_text(TEXT)
    build_index(docs=str(docs), name="play", output_root=tmp_path, progress=False, settings=IndexSettings(
        chunk=ChunkConfig(words=20, overlap=5), clean=CleanConfig(min_chars=None, min_words=None)))
    folder = run_dir(tmp_path / "run", 0, tokenizer_json()) / "model"
    loads, apps = [], []
    real = rag.load_index
    monkeypatch.setattr(rag, "load_index", lambda *args, **kwargs: loads.append(args) or real(*args, **kwargs))

    class Uvicorn:  # the stage runs whole, up to where uvicorn would answer requests
        def __init__(self, config):
            self.config, self.started = config, True

        def run(self, sockets):
            apps.append(self.config.app)

    monkeypatch.setattr(server.uvicorn, "Server", Uvicorn)
    monkeypatch.setattr(server.signal, "signal", lambda *args: None)
    monkeypatch.setattr(server, "set_threads", lambda settings: None)
    main(compose_config("serve", [f"ckpt={folder}", "rag.index=play", f"paths.output_root={tmp_path}",
                                  "serve.port=0", "device=cpu"]))
    assert len(apps) == 1 and len(loads) == 1, loads


def test_serve_needs_a_model_or_a_registry_in_one_line(tmp_path):
    for args, message in (([], "llm serve needs ckpt=<run dir | .ckpt | model folder> or registry=<name>"),
                          (["registry=nothing"], "registry=nothing: no registry under"),
                          (["registry=../x"], "registry='../x' becomes a folder name")):
        result = llm(["serve", *args], tmp_path, check=False, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    from lightning_llm.serving.settings import ServeSettings

    with pytest.raises(ValueError, match="registry='shakes' needs registry_root"):
        ServeSettings(ckpt="model", registry=NAME)


def test_a_replaced_version_finishes_its_requests_then_lets_its_model_go(tmp_path):
    """In process: a request running on v1 at the switch runs to its end there; then v1's weights go."""
    from lightning_llm.serving.engine import SamplingParams
    from lightning_llm.serving.follow import hub_of
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    tokenizer = tokenizer_json()
    registry = Registry(tmp_path, NAME)
    for seed, version in enumerate(["v1", "v2"]):
        registry.promote(source=run_dir(tmp_path / version, seed, tokenizer), reason=version)
    settings = ServeSettings(ckpt=str(registry.path("v1")), registry=NAME, registry_root=str(tmp_path),
                             max_tokens=200, warmup=False)
    artifact = load_artifact(registry.path("v1"))
    stray = artifact.model  # a reference to v1's model left somewhere: it must not keep the weights
    hub = hub_of(Service(artifact, settings))
    del artifact

    async def switch():
        await hub.start()
        handle = hub.current.engine.submit([1, 2, 3], SamplingParams(max_tokens=200, temperature=0))
        new = await asyncio.to_thread(hub.load, "v2")
        hub.switch(new)
        assert hub.current is new and hub.draining and hub.current.version == "v2"
        with pytest.raises(Exception, match="shutting down"):
            hub.draining[0].engine.submit([1, 2], SamplingParams(max_tokens=1))  # v1 takes no new request
        await asyncio.gather(*hub.retiring)
        return [event async for batch in handle.abatches() for event in batch]

    try:
        events = asyncio.run(switch())
        assert events[-1].finish_reason == "length" and sum(e.token_id is not None for e in events) == 200
        assert not hub.draining
        tensors = [*stray.parameters(), *stray.buffers()]
        assert tensors and all(t.device.type == "meta" for t in tensors)  # v1's weights are gone
    finally:
        hub.stop()


def test_one_process_serving_a_registry_keeps_no_replaced_model(tmp_path, monkeypatch):
    """Through the stage and server.serve (uvicorn's loop stands in): once v2 replaced v1 and v1 drained,
    nothing holds v1's model, though the stage's and serve()'s frames are still running."""
    import gc
    import weakref

    import lightning_llm.model.io as io
    import lightning_llm.serving.follow as follow
    import lightning_llm.serving.server as server
    from lightning_llm.stages.serve import main

    tokenizer = tokenizer_json()
    registry = Registry(tmp_path, NAME)
    runs = [run_dir(tmp_path / version, seed, tokenizer) for seed, version in enumerate(["v1", "v2"])]
    registry.promote(source=runs[0], reason="v1")
    models, hubs, freed = [], [], []
    real_load, real_hub_of = io.load_artifact, follow.hub_of

    def load(*args, **kwargs):
        artifact = real_load(*args, **kwargs)
        models.append(weakref.ref(artifact.model))
        return artifact

    class Uvicorn:
        def __init__(self, config):
            self.config, self.started = config, True

        def run(self, sockets):
            app, hub = self.config.app, hubs[0]

            async def switch():
                async with app.router.lifespan_context(app):
                    assert hub.current.version == "v1"
                    registry.promote(source=runs[1], reason="v2")
                    hub.switch(await asyncio.to_thread(hub.load, "v2"))
                    await asyncio.gather(*hub.retiring)
                    gc.collect()
                    freed.append(models[0]() is None)

            asyncio.run(switch())

    monkeypatch.setattr(io, "load_artifact", load)
    monkeypatch.setattr(server, "load_artifact", load)
    monkeypatch.setattr(follow, "hub_of", lambda service: hubs.append(real_hub_of(service)) or hubs[-1])
    monkeypatch.setattr(server.uvicorn, "Server", Uvicorn)
    monkeypatch.setattr(server.signal, "signal", lambda *args: None)
    monkeypatch.setattr(server, "set_threads", lambda settings: None)
    main(compose_config("serve", [f"registry={NAME}", f"paths.output_root={tmp_path}", "serve.port=0", "device=cpu",
                                  "serve.warmup=false", "serve.registry_poll=60"]))
    assert len(models) == 2 and freed == [True]


def test_shutdown_returns_once_the_last_running_request_is_cancelled():
    """The engine wakes a waiting shutdown when it drops cancelled requests (not only at its deadline)."""
    from lightning_llm.serving.engine import Engine, SamplingParams

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=256, n_layer=1, n_head=1, n_embd=16)).eval()
    engine = Engine(model, max_batch_size=1, on_step=lambda size: time.sleep(0.01))  # 200 tokens: 2 s or more
    engine.start()
    running = engine.submit([1, 2, 3], SamplingParams(max_tokens=200, temperature=0))
    queued = engine.submit([1, 2], SamplingParams(max_tokens=200, temperature=0))
    next(running.events())  # it runs
    stopper = threading.Thread(target=engine.shutdown, kwargs={"drain_timeout": 30})
    stopper.start()
    time.sleep(0.1)
    start = time.perf_counter()
    queued.cancel()
    running.cancel()
    stopper.join(30)
    assert time.perf_counter() - start < 5 and not stopper.is_alive() and not engine.alive
    assert running.finished and queued.finished


def test_a_version_no_longer_live_once_loaded_is_dropped_for_the_live_one(tmp_path):
    """While v2 loads, v3 is promoted: v2 is stopped once loaded, never served, and the server goes to v3."""
    from lightning_llm.serving.follow import hub_of
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    tokenizer = tokenizer_json()
    registry = Registry(tmp_path, NAME)
    runs = [run_dir(tmp_path / version, seed, tokenizer) for seed, version in enumerate(["v1", "v2", "v3"])]
    registry.promote(source=runs[0], reason="v1")
    settings = ServeSettings(ckpt=str(registry.path("v1")), registry=NAME, registry_root=str(tmp_path),
                             warmup=False, registry_poll=0.05)
    hub = hub_of(Service(load_artifact(registry.path("v1")), settings))
    built, served_versions = [], []
    build = hub.build

    def slow_build(path: Path) -> Service:
        service = build(path)
        built.append(service)
        if service.version == "v2":  # a newer version is promoted while v2 loads
            registry.promote(source=runs[2], reason="v3 came meanwhile")
        return service

    hub.build = slow_build

    async def follow():
        task = await hub.start()
        registry.promote(source=runs[1], reason="v2")
        deadline = time.monotonic() + 60
        while hub.current.version != "v3" and time.monotonic() < deadline:
            served_versions.append(hub.current.version)
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait([task])

    try:
        asyncio.run(follow())
        assert hub.current.version == "v3" and set(served_versions) == {"v1"}
        assert [s.version for s in built] == ["v2", "v3"] and not built[0].engine.alive
    finally:
        hub.stop()


def test_llm_registry_status_checks_its_numbers_and_reads_metrics_with_care(tmp_path, monkeypatch):
    """timeout= and drift.* are checked in one line; /metrics is asked for at the server's path, without the
    url's query; a page too large or not Prometheus text is one line too."""
    import http.server

    import lightning_llm.stages.registry as stage
    from lightning_llm.errors import UserError

    registry = Registry(tmp_path, NAME)
    registry.promote(source=run_dir(tmp_path / "v1", 0, tokenizer_json()), reason="v1")
    paths, pages = [], [b"not metrics {", b"# TYPE x counter\n" + b"x_total 1\n" * 200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            paths.append(self.path)
            body = pages[len(paths) - 1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/base/?q=1#x"

    def status(*args: str) -> str:
        with pytest.raises(UserError) as caught:
            stage.status_text(compose_config("registry", ["action=status", f"name={NAME}", f"url='{url}'", *args]),
                              registry)
        assert "\n" not in str(caught.value), caught.value
        return str(caught.value)

    try:
        for arg in ("timeout=abc", "timeout=null", "timeout=0", "drift.threshold=x", "drift.min_tokens=x",
                    "drift.min_tokens=1.5"):
            key, value = arg.split("=")
            assert status(arg).startswith(f"{key}="), arg
        assert paths == []  # nothing was asked before the numbers were checked
        assert "is not a Prometheus metrics page" in status()
        monkeypatch.setattr(stage, "MAX_METRICS_BYTES", 1000)
        assert "sent more than 1,000 bytes" in status()
        assert paths == ["/base/metrics", "/base/metrics"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_malformed_registry_file_is_said_once_and_a_dead_follow_task_is_logged(tmp_path, monkeypatch, caplog):
    """registry.json that is JSON but not a registry's keeps the server following; were the follow task to
    end with an error anyway, the log says so."""
    import logging

    from lightning_llm.serving.follow import hub_of
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    registry = Registry(tmp_path, NAME)
    registry.promote(source=run_dir(tmp_path / "v1", 0, tokenizer_json()), reason="v1")
    state = registry.dir / "registry.json"
    good = state.read_text()
    settings = ServeSettings(ckpt=str(registry.path("v1")), registry=NAME, registry_root=str(tmp_path),
                             warmup=False, registry_poll=0.02)
    hub = hub_of(Service(load_artifact(registry.path("v1")), settings))
    caplog.set_level(logging.INFO, logger="lightning_llm.serving.follow")

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {caplog.text}"
            await asyncio.sleep(0.01)

    async def follow():
        task = await hub.start()
        for bad in ("[]", "{}", '{"live": null'):  # a list, no "live", not JSON
            state.write_text(bad)
            await until(lambda: "cannot read" in caplog.text, "the unreadable file said")
            await asyncio.sleep(0.1)
            assert not task.done(), task
            state.write_text(good)
            await asyncio.sleep(0.1)
            caplog.clear()
        monkeypatch.setattr(Registry, "live", property(lambda self: 1 / 0))  # a bug, say
        state.write_text(good + " ")
        await until(task.done, "the follow task's end")
        await until(lambda: "stopped following it (ZeroDivisionError" in caplog.text, "its end logged")

    try:
        asyncio.run(follow())
        assert hub.current.version == "v1"
    finally:
        hub.stop()


def test_a_load_cut_short_by_shutdown_or_a_failed_warmup_leaves_no_engine_running(tmp_path):
    """The follow task cancelled (shutdown) while a version loads: that version is stopped once loaded.
    A warm-up that fails stops its engine before the error goes up."""
    from lightning_llm.serving.follow import hub_of
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    tokenizer = tokenizer_json()
    registry = Registry(tmp_path, NAME)
    runs = [run_dir(tmp_path / version, seed, tokenizer) for seed, version in enumerate(["v1", "v2"])]
    registry.promote(source=runs[0], reason="v1")
    settings = ServeSettings(ckpt=str(registry.path("v1")), registry=NAME, registry_root=str(tmp_path),
                             warmup=False, registry_poll=0.02)
    hub = hub_of(Service(load_artifact(registry.path("v1")), settings))
    built, loading = [], threading.Event()
    build = hub.build

    def slow_build(path: Path) -> Service:
        loading.set()
        time.sleep(0.3)  # the shutdown comes while this loads
        built.append(build(path))
        return built[-1]

    hub.build = slow_build

    async def cancelled_while_loading():
        task = await hub.start()
        registry.promote(source=runs[1], reason="v2")
        await asyncio.to_thread(loading.wait, 30)
        task.cancel()
        await asyncio.wait([task])

    try:
        asyncio.run(cancelled_while_loading())
        assert hub.current.version == "v1" and len(built) == 1 and not built[0].engine.alive
    finally:
        hub.stop()

    service = Service(load_artifact(registry.path("v2")), ServeSettings(ckpt=str(registry.path("v2"))))

    def refuse(*args, **kwargs):
        raise ValueError("no room for the warm-up")

    service.engine.submit = refuse
    with pytest.raises(ValueError, match="no room"):
        service.start()
    assert not service.engine.alive
