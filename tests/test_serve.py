"""`llm serve` as clients see it: real servers on free ports of 127.0.0.1, the real `openai` client.

Three servers start together (model weights are random: the wire format, batching, cache
and cancellation do not depend on them):
- `api`: a tiny model, two API keys, the response cache on; most tests talk to it.
- `slow`: a wider model with a 512-token window (generations last long enough to interrupt),
  the cache off (so one-at-a-time and concurrent runs are both computed).
- `drain`: like `slow` with one batch slot and one queue place: the 429 and SIGTERM test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact

LLM = [sys.executable, "-m", "lightning_llm.cli"]
KEY, ENV_KEY = "sk-test-cli", "sk-test-env"


@dataclass
class Server:
    proc: subprocess.Popen
    log: Path
    url: str = ""

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics").text
        return {f"{s.name}{json.dumps(s.labels, sort_keys=True) if s.labels else ''}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def launch(model_dir: Path, log: Path, *overrides: str, env: dict | None = None) -> Server:
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    handle = open(log, "w")
    proc = subprocess.Popen(LLM + ["serve", f"ckpt={model_dir}", "serve.port=0", *overrides],
                            stdout=handle, stderr=subprocess.STDOUT, env=env)
    return Server(proc, log)


def ready(server: Server, timeout: float = 120) -> Server:
    """Wait for the URL line (printed after warm-up) and a healthy /health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving \S+ at (http://[\d.]+:\d+)/v1", server.log.read_text())
        if found:
            server.url = found.group(1)
            assert httpx.get(server.url + "/health").status_code == 200
            return server
        if server.proc.poll() is not None:
            raise AssertionError(f"llm serve exited with {server.proc.returncode}:\n{server.log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"llm serve did not start in {timeout} s:\n{server.log.read_text()}")


def stop(server: Server, timeout: float = 60) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise


def model_folder(path: Path, tokenizer_path: Path, **shape) -> Path:
    tokenizer_json = tokenizer_path.read_text()
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, **shape))
    return save_artifact(model, tokenizer_json, path, manifest=new_manifest(produced_by="test",
                                                                               tokenizer_json=tokenizer_json))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, prepared):
    root = tmp_path_factory.mktemp("serve")
    tiny = model_folder(root / "tiny", prepared.tokenizer_path, block_size=64, n_layer=2, n_head=2, n_embd=32)
    slow = model_folder(root / "slow", prepared.tokenizer_path, block_size=512, n_layer=4, n_head=4, n_embd=128,
                        position="rope")
    return root, tiny, slow


@pytest.fixture(scope="module")
def servers(folders):
    """All three start at once (each spends most of its start importing torch)."""
    root, tiny, slow = folders
    started = {
        "api": launch(tiny, root / "api.log", f"serve.api_keys=[{KEY}]", "serve.max_n=4", "serve.max_tokens=48",
                      "serve.max_body_bytes=20000", "serve.model_name=tiny",
                      "serve.dtype=float32", env={"LLM_API_KEYS": ENV_KEY}),  # logprobs checked against fp32
        "slow": launch(slow, root / "slow.log", "serve.cache_size=0", "serve.max_tokens=500",
                       "serve.model_name=slow"),
        "drain": launch(slow, root / "drain.log", "serve.max_batch_size=1", "serve.max_queue=1",
                        "serve.max_tokens=500", "serve.drain_timeout=120", "serve.model_name=slow"),
    }
    try:
        yield {name: ready(server) for name, server in started.items()}
    finally:
        for server in started.values():
            stop(server)


@pytest.fixture(scope="module")
def api(servers):
    return servers["api"]


# --- the OpenAI wire format, through the openai client -------------------------------------------

def test_models_and_completions_through_the_openai_client(api):
    client = api.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices agree
    assert out.usage.prompt_tokens == 6 and out.usage.completion_tokens <= 24
    assert {c.finish_reason for c in out.choices} <= {"stop", "length"}

    two = client.completions.create(model="tiny", prompt=["To be", "KING:"], max_tokens=5, temperature=0.8,
                                    top_p=0.9, seed=7, extra_body={"top_k": 20})
    assert len(two.choices) == 2 and two.usage.prompt_tokens == 5 + 5


def test_streamed_completion_equals_the_whole_one(api):
    client = api.client()
    whole = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0, user="a")
    chunks = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0.0,
                                            user="b", stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_stop_strings_cut_the_text_and_end_generation(api):
    client = api.client()
    free = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0, seed=1)
    text = free.choices[0].text
    assert len(text) >= 6, text
    stop = text[3:5]  # two characters from the middle of the greedy continuation
    cut = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_chat_completions_streamed_and_not(api):
    client = api.client()
    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who is there?"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10, temperature=0,
                                         logprobs=True, top_logprobs=2)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert len(choice.logprobs.content) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    rendered = httpx.post(api.url + "/tokenize", headers={"Authorization": f"Bearer {KEY}"},
                          json={"prompt": "SYSTEM:\nSpeak verse.\n\nUSER:\nWho is there?\n\nASSISTANT:\n"}).json()
    assert out.usage.prompt_tokens == rendered["count"]  # the default template, rendered


def test_echo_logprobs_score_a_token_id_prompt_like_lm_eval(api, folders):
    """lm-evaluation-harness's local-completions: token-id prompts, echo, logprobs=1, max_tokens=1;
    it reads token_logprobs[ctxlen:-1] and top_logprobs. The numbers are the model's own."""
    _, tiny, _ = folders
    artifact = load_artifact(tiny)
    prompts = [artifact.tokenizer.encode("ROMEO: Hark!").ids, artifact.tokenizer.encode("To be, or not").ids]
    out = api.client().completions.create(model="tiny", prompt=prompts, echo=True, logprobs=1, max_tokens=1,
                                          temperature=0, seed=1234)
    for choice, ids in zip(sorted(out.choices, key=lambda c: c.index), prompts):
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        with torch.no_grad():
            logits, _ = artifact.model(torch.tensor([ids]), targets=torch.tensor([ids]))
        expected = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert lp.token_logprobs[1:-1] == pytest.approx(expected.tolist(), abs=1e-4)
        for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:]):
            assert token in top and max(top.values()) <= 0  # the chosen token is always among them
        assert choice.text.startswith(artifact.tokenizer.decode(ids))
        assert lp.text_offset[:3] == [0, 1, 2]  # the char tokenizer: one character per token
    scored = api.client().completions.create(model="tiny", prompt=prompts[0], echo=True, logprobs=0, max_tokens=0)
    assert scored.choices[0].text == "ROMEO: Hark!" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        out.choices[0].logprobs.token_logprobs[1:-1], abs=1e-5)


def test_tokenizer_endpoints(api, folders):
    _, tiny, _ = folders
    tokenizer = load_artifact(tiny).tokenizer
    auth = {"Authorization": f"Bearer {KEY}"}
    info = httpx.get(api.url + "/tokenizer_info", headers=auth).json()
    # <|endoftext|> separates the training documents: the model ends text with it and starts after it
    assert info["eos_token"] == info["bos_token"] == "<|endoftext|>" and info["pad_token"] == "<|pad|>"
    assert "ASSISTANT" in info["chat_template"]
    ids = httpx.post(api.url + "/tokenize", json={"prompt": "Hark, a light!", "add_special_tokens": False},
                     headers=auth).json()["tokens"]
    assert ids == tokenizer.encode("Hark, a light!").ids
    detokenized = httpx.post(api.url + "/detokenize", json={"tokens": ids}, headers=auth).json()
    assert detokenized == {"prompt": "Hark, a light!"}


# --- keys, bad input, limits ---------------------------------------------------------------------

def test_keys_are_required_where_configured(api):
    body = {"model": "tiny", "prompt": "A", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        answer = httpx.post(api.v1 + "/completions", json=body, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
    for key in (KEY, ENV_KEY):  # from serve.api_keys and from $LLM_API_KEYS
        answer = httpx.post(api.v1 + "/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        api.client("nope").models.list()
    assert httpx.get(api.url + "/health").status_code == 200  # load balancers need no key
    assert KEY not in api.log.read_text() and ENV_KEY not in api.log.read_text()


def long_prompt() -> list[int]:
    return [5] * 70


BAD = [  # (body or raw bytes, status, the field the error names)
    (b'{"prompt": "A", "max_tokens": ', 400, None),  # malformed JSON
    (b'["not", "an", "object"]', 400, None),
    ({"prompt": "A", "max_tokens": "5"}, 400, "max_tokens"),  # a wrong type is not coerced
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": [1, "a"]}, 400, "prompt"),
    ({"prompt": "A", "frobnicate": 1}, 400, "frobnicate"),  # an unknown field
    ({"prompt": "A", "presence_penalty": 0.5}, 400, "presence_penalty"),  # known but not supported
    ({"prompt": long_prompt()}, 400, "prompt"),  # longer than the context (64)
    ({"prompt": "A", "max_tokens": 49}, 400, "max_tokens"),  # above serve.max_tokens
    ({"prompt": [5] * 40, "max_tokens": 30}, 400, "max_tokens"),  # past the context
    ({"prompt": "A", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "A", "max_tokens": 0}, 400, "max_tokens"),  # 0 only with echo
    ({"prompt": "A", "temperature": 2.5}, 400, "temperature"),
    ({"prompt": "A", "temperature": -0.1}, 400, "temperature"),
    ({"prompt": "A", "top_p": 0}, 400, "top_p"),
    ({"prompt": "A", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "A", "top_k": 0}, 400, "top_k"),
    ({"prompt": "A", "n": 5}, 400, "n"),  # above serve.max_n
    ({"prompt": "A", "n": 0}, 400, "n"),
    ({"prompt": [0, 1, 10**6]}, 400, "prompt"),  # a token id outside the vocabulary
    ({"prompt": [-1]}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": "A", "logprobs": 21}, 400, "logprobs"),
    ({"prompt": "A", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "A", "seed": -3}, 400, "seed"),
    ({"prompt": "\u4e2d"}, 400, "prompt"),  # a character the tokenizer never saw
    ({"prompt": "A", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "A" * 30_000}, 413, None),  # over serve.max_body_bytes
]


@pytest.mark.parametrize("body, status, param", BAD, ids=[f"{i}-{s}-{p}" for i, (_, s, p) in enumerate(BAD)])
def test_bad_completion_requests_get_a_4xx_naming_the_field(api, body, status, param):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(api.v1 + "/completions", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi", "mood": "x"}]}, "messages.0.mood"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 49}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]}, "messages.0.tool_calls"),
    ({"messages": [{"role": "user", "content": "x" * 80}]}, "messages"),  # longer than the context
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),  # needs logprobs
]


@pytest.mark.parametrize("body, param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_requests_get_a_400_naming_the_field(api, body, param):
    answer = httpx.post(api.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_the_server_still_answers_after_bad_input(api):
    headers = {"Authorization": f"Bearer {KEY}"}
    for body, _, _ in BAD:  # all of them again, at once
        httpx.post(api.v1 + "/completions", content=body if isinstance(body, bytes) else json.dumps(body),
                   headers={**headers, "Content-Type": "application/json"})
    assert httpx.get(api.url + "/health").status_code == 200
    out = httpx.post(api.v1 + "/completions", json={"prompt": "A", "max_tokens": 3}, headers=headers)
    assert out.status_code == 200 and len(out.json()["choices"]) == 1
    assert httpx.get(api.url + "/no/such/path", headers=headers).json()["error"]["type"] == "not_found_error"


# --- cache, metrics --------------------------------------------------------------------------------

def test_deterministic_requests_are_answered_from_the_cache(api):
    body = {"model": "tiny", "prompt": "KING:", "max_tokens": 8, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    before = api.metrics()
    first = httpx.post(api.v1 + "/completions", json=body, headers=headers)
    second = httpx.post(api.v1 + "/completions", json=body, headers=headers)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == second.json()["choices"] and first.json()["id"] != second.json()["id"]
    streamed = httpx.post(api.v1 + "/completions", json={**body, "stream": True}, headers=headers)
    assert streamed.headers["x-cache"] == "hit"
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == first.json()["choices"][0]["text"]
    assert streamed.text.rstrip().endswith("data: [DONE]")
    seeded = {**body, "temperature": 1.0, "seed": 3}
    assert [httpx.post(api.v1 + "/completions", json=seeded, headers=headers).headers["x-cache"]
            for _ in range(2)] == ["miss", "hit"]
    sampled = httpx.post(api.v1 + "/completions", json={**body, "temperature": 1.0}, headers=headers)
    assert sampled.headers["x-cache"] == "bypass"
    after = api.metrics()
    assert after["llm_cache_hits_total"] - before.get("llm_cache_hits_total", 0) == 3
    assert after["llm_cache_misses_total"] - before.get("llm_cache_misses_total", 0) == 2


def test_metrics_parse_with_prometheus_client(api):
    api.client().completions.create(model="tiny", prompt="A", max_tokens=4, stream=True).close()
    body = {"model": "tiny", "prompt": "A", "max_tokens": 1}  # and one refused request of each kind, here
    assert httpx.post(api.v1 + "/completions", json=body).status_code == 401  # no key
    bad = httpx.post(api.v1 + "/completions", json={**body, "max_tokens": -1}, headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400, bad.text
    metrics = api.metrics()
    ok = 'llm_requests_total{"endpoint": "/v1/completions", "status": "200"}'
    assert metrics[ok] >= 1
    assert metrics['llm_request_errors_total{"endpoint": "/v1/completions", "status": "400"}'] >= 1
    assert metrics['llm_request_errors_total{"endpoint": "/v1/completions", "status": "401"}'] >= 1
    assert metrics["llm_generated_tokens_total"] > 0 and metrics["llm_prompt_tokens_total"] > 0
    assert metrics["llm_time_to_first_token_seconds_count"] > 0
    assert metrics['llm_request_latency_seconds_count{"endpoint": "/v1/completions"}'] >= 1
    assert metrics["llm_batch_size_count"] > 0 and "llm_queue_depth" in metrics and "llm_active_sequences" in metrics


# --- batching, cancellation, shutdown (the slow servers) -----------------------------------------

PROMPTS = ["ROMEO:", "JULIET:\nAy me", "To be, or not", "KING HENRY:", "Now is the winter", "O", "A horse!",
           "Friends, Romans"]


def test_concurrent_greedy_outputs_equal_one_at_a_time_outputs(servers):
    slow = servers["slow"]
    client = slow.client()

    def complete(prompt: str) -> str:
        return client.completions.create(model="slow", prompt=prompt, max_tokens=40, temperature=0).choices[0].text

    alone = [complete(p) for p in PROMPTS]
    before = slow.metrics()
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(complete, PROMPTS))
    assert together == alone
    after = slow.metrics()
    steps = after["llm_batch_size_count"] - before["llm_batch_size_count"]
    tokens = after["llm_batch_size_sum"] - before["llm_batch_size_sum"]
    assert tokens / steps > 1.5  # they were decoded together, not one after another


def test_tokens_that_come_together_share_a_chunk_with_all_their_logprobs(servers):
    """serve.stream_interval (0.02 s by default): a stream's tokens go out in fewer chunks than
    tokens, and each chunk carries the text and logprobs of all of its tokens."""
    slow = servers["slow"]
    body = {"model": "slow", "prompt": "ROMEO:", "max_tokens": 300, "temperature": 0, "logprobs": 1}
    whole = httpx.post(slow.v1 + "/completions", json=body, timeout=120).json()
    chunks = []
    with httpx.stream("POST", slow.v1 + "/completions", json={**body, "stream": True}, timeout=120) as answer:
        chunks = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")]
    choices = [c["choices"][0] for c in chunks]
    tokens = [t for c in choices for t in c["logprobs"]["tokens"]]
    assert "".join(c["text"] for c in choices) == whole["choices"][0]["text"]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"]
    assert [lp for c in choices for lp in c["logprobs"]["token_logprobs"]] == \
        pytest.approx(whole["choices"][0]["logprobs"]["token_logprobs"], abs=1e-4)
    offsets = [o for c in choices for o in c["logprobs"]["text_offset"]]
    assert offsets == whole["choices"][0]["logprobs"]["text_offset"]
    assert len(tokens) >= 200 and len(chunks) < len(tokens) / 3, (len(chunks), len(tokens))


def test_a_client_that_disconnects_cancels_its_generation(servers):
    slow = servers["slow"]
    body = {"model": "slow", "prompt": "ROMEO:", "max_tokens": 500, "temperature": 0}
    whole = httpx.post(slow.v1 + "/completions", json=body, timeout=120).json()["usage"]["completion_tokens"]
    assert whole >= 300  # this greedy continuation runs long (the same request, not disconnected)
    before = slow.metrics()["llm_generated_tokens_total"]
    with httpx.stream("POST", slow.v1 + "/completions", json={**body, "stream": True}) as answer:
        assert next(line for line in answer.iter_lines() if line.startswith("data:"))
    deadline = time.monotonic() + 30
    while slow.metrics()["llm_active_sequences"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    generated = slow.metrics()["llm_generated_tokens_total"] - before
    assert 1 <= generated < whole / 2, (generated, whole)  # the rest was never computed


def test_sigterm_finishes_requests_in_flight_then_exits_0(servers):
    drain = servers["drain"]
    body = {"model": "slow", "prompt": "ROMEO:", "max_tokens": 400, "temperature": 0, "stream": True}
    results: dict[int, list[str]] = {}

    def consume(i: int, started: threading.Event):
        with httpx.stream("POST", drain.v1 + "/completions", json=body, timeout=120) as answer:
            lines = []
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    started.set()
                    lines.append(line)
            results[i] = lines

    events = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=consume, args=(i, e)) for i, e in enumerate(events)]
    threads[0].start()
    assert events[0].wait(30)  # the first holds the only batch slot ...
    threads[1].start()
    deadline = time.monotonic() + 30
    while drain.metrics()["llm_queue_depth"] < 1 and time.monotonic() < deadline:  # ... the second waits in
        time.sleep(0.02)                                                           # the queue of one ...
    full = httpx.post(drain.v1 + "/completions", json={**body, "stream": False})
    assert full.status_code == 429 and full.headers["retry-after"] == "1"  # ... and a third is turned away
    drain.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    assert drain.proc.wait(60) == 0
    for lines in results.values():
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][6:])
        assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert len(results) == 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(drain.url + "/health")
    assert "Traceback" not in drain.log.read_text()


# --- the stage's own errors ------------------------------------------------------------------------

def test_the_stage_refuses_a_missing_model_a_bad_setting_and_a_port_in_use_in_one_line(api, folders, tmp_path):
    _, tiny, _ = folders
    port = api.url.rsplit(":", 1)[1]
    cases = [([f"ckpt={tmp_path}/nothing"], "does not exist"),
             ([f"ckpt={tiny}", "serve.max_batch_size=0"], "max_batch_size"),
             ([f"ckpt={tiny}", f"serve.port={port}"], f"serve.port={port}")]
    runs = [subprocess.Popen(LLM + ["serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args, _ in cases]
    for run, (_, message) in zip(runs, cases):
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 2 and message in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")


# --- a scoring client --------------------------------------------------------------------------------

MC_TASK = """task: speakers
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
MC_DOCS = [{"context": "ROMEO: But soft, what light", "choices": [" breaks", " sings", " flies"], "label": 0},
           {"context": "To be, or not to", "choices": [" be", " see", " go"], "label": 0},
           {"context": "Friends, Romans,", "choices": [" countrymen", " horses"], "label": 0}]


@pytest.mark.slow
def test_lm_evaluation_harness_scores_through_the_tokenizer_endpoints(api, folders, tmp_path):
    """local-completions finds /tokenizer_info and /tokenize, sends token-id prompts with echo
    and logprobs, and gets the loglikelihoods the model itself gives (no tokenizer on its side)."""
    pytest.importorskip("lm_eval")
    _, tiny, _ = folders
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in MC_DOCS))
    (tmp_path / "speakers.yaml").write_text(MC_TASK.format(data=tmp_path / "docs.jsonl"))
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--model", "local-completions", "--model_args",
            f"model=tiny,base_url={api.v1}/completions,max_length=64,auth_token={KEY}", "--tasks", "speakers",
            "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run([sys.executable, "-m", "lm_eval", *args], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Using remote tokenizer" in run.stderr
    samples = [json.loads(line) for path in (tmp_path / "out").rglob("samples_speakers_*.jsonl")
               for line in path.read_text().splitlines()]
    artifact = load_artifact(tiny)
    for sample in samples:
        for request, response in zip(sample["arguments"].values(), sample["filtered_resps"]):
            context, continuation = (artifact.tokenizer.encode(request[key]).ids for key in ("arg_0", "arg_1"))
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logits, _ = artifact.model(ids, targets=ids)
            logp = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            assert float(response[0]) == pytest.approx(logp[len(context) - 1:].sum().item(), abs=1e-3)
    assert len(samples) == len(MC_DOCS)


# --- replicas --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_share_one_port_and_one_metrics_view(folders, tmp_path):
    _, tiny, _ = folders
    server = ready(launch(tiny, tmp_path / "workers.log", "serve.workers=2", "serve.model_name=tiny"))
    try:
        deadline = time.monotonic() + 60
        while server.log.read_text().count("serving tiny") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        client = server.client()
        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(lambda i: client.completions.create(model="tiny", prompt="A", max_tokens=4,
                                                                      seed=i).choices[0].text, range(16)))
        assert len(texts) == 16
        assert server.metrics()['llm_requests_total{"endpoint": "/v1/completions", "status": "200"}'] == 16
        # serve.dtype=auto was measured once, before the workers started, and both run what it chose
        chosen = re.search(r"note: every worker: dtype auto: (float32|bfloat16)", server.log.read_text()).group(1)
        assert server.log.read_text().count(f"model weights: dtype {chosen}") == 2
    finally:
        assert stop(server) == 0
