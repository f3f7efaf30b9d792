"""The app in process (httpx's ASGI transport, the engine running): the request time limit."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch
from conftest import random_model_folder

from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.serving.app import create_app
from lightning_llm.serving.service import Service
from lightning_llm.serving.settings import ServeSettings


@pytest.fixture(scope="module")
def service(tmp_path_factory, prepared):
    folder = random_model_folder(tmp_path_factory.mktemp("app") / "model", prepared.tokenizer_path.read_text(),
                                 block_size=512, n_layer=4, n_head=4, n_embd=128, position="rope")
    service = Service(load_artifact(folder), ServeSettings(ckpt=str(folder), request_timeout=0.3, max_tokens=500))
    service.start()
    yield service
    service.stop()


async def post(service: Service, body: dict) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/v1/completions", json=body)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_its_time_limit_ends_with_504_and_computes_no_more(service, stream):
    body = {"prompt": "ROMEO:", "max_tokens": 500, "temperature": 0, "stream": stream}
    start = time.perf_counter()
    answer = asyncio.run(post(service, body))
    assert time.perf_counter() - start < 5
    if stream:  # the status line went out with the first token: the error comes as the last event
        events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    else:
        assert answer.status_code == 504 and answer.json()["error"]["type"] == "timeout_error"
    deadline = time.monotonic() + 5
    while service.engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.engine.active == 0 and service.engine.queue_depth == 0


@pytest.fixture
def tiny(tmp_path, prepared):
    tokenizer_json = prepared.tokenizer_path.read_text()
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_str(tokenizer_json).get_vocab_size(), block_size=64, n_layer=1,
                          n_head=2, n_embd=32))
    folder = save_artifact(model, tokenizer_json, tmp_path / "tiny",
                           manifest=new_manifest(produced_by="test", tokenizer_json=tokenizer_json))
    return load_artifact(folder), str(folder)


def test_a_model_that_fails_its_warm_up_never_says_ready(tiny):
    artifact, folder = tiny

    def broken(module, args):
        raise RuntimeError("simulated device failure")

    hook = artifact.model.register_forward_pre_hook(broken)
    service = Service(artifact, ServeSettings(ckpt=folder, dtype="float32"))  # auto would time the broken model
    try:
        with pytest.raises(RuntimeError, match="warm-up"):
            service.start()
        assert not service.ready and not service.engine.alive  # and its thread is gone
    finally:
        hook.remove()
        service.stop()


def test_a_dead_engine_turns_health_and_requests_to_503(tiny, monkeypatch):
    artifact, folder = tiny
    service = Service(artifact, ServeSettings(ckpt=folder, slide=True))
    service.start()
    try:
        app = create_app(service)

        async def get(path):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                if path == "/health":
                    return await client.get(path)
                return await client.post(path, json={"prompt": "ROMEO:", "max_tokens": 4})

        assert asyncio.run(get("/health")).status_code == 200
        from lightning_llm.serving.engine import SamplingParams

        handle = service.engine.submit([1, 2, 3], SamplingParams(max_tokens=100_000, temperature=0))
        events = handle.events()
        next(events)
        monkeypatch.setattr("lightning_llm.serving.engine.Batch.remove", lambda self, row: 1 / 0)
        handle.cancel()  # dropping its row fails: the engine thread dies
        assert [e.finish_reason for e in events][-1] == "error"
        service.engine.thread.join(10)
        assert asyncio.run(get("/health")).status_code == 503
        answer = asyncio.run(get("/v1/completions"))
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"
    finally:
        service.stop()


class ScriptedHandle:
    """A RequestHandle stand-in that hands over the given batches of events."""

    def __init__(self, batches):
        self.batches, self.cancelled = batches, False

    async def abatches(self, interval):
        for events in self.batches:
            yield events

    def cancel(self):
        self.cancelled = True


def test_a_delta_carries_the_logprobs_of_tokens_whose_text_was_held_back(service):
    """A token whose text might start a stop string is held back; its logprob must go out with the
    delta that finally carries its text, not be skipped."""
    from lightning_llm.serving.engine import TokenEvent
    from lightning_llm.serving.service import Sequence
    from lightning_llm.serving.text import IncrementalDecoder, StopMatcher

    tokenizer = service.tokenizer
    prompt = tokenizer.encode("ROMEO:").ids
    ids = tokenizer.encode(" the king").ids
    first = tokenizer.decode(ids[:1])
    events = [TokenEvent(t, logprob=-float(i + 1), top_logprobs=[]) for i, t in enumerate(ids)]
    events[-1].finish_reason = "length"
    # the first token's text is the start of a stop string that never completes: it waits
    handle = ScriptedHandle([events[:1], events[1:]])
    seq = Sequence(index=0, prompt_index=0, prompt_ids=prompt, handle=handle,
                   decoder=IncrementalDecoder(tokenizer, prompt), stops=StopMatcher([first + "\u2603"]),
                   stop_ids=frozenset())

    async def collect():
        return [delta async for delta in seq.deltas()]

    deltas = asyncio.run(collect())
    assert [start for _, start in deltas] == [0]  # one delta, for every token from the first
    assert "".join(piece for piece, _ in deltas) == tokenizer.decode(ids)
    assert seq.logprobs == [e.logprob for e in events] and seq.finish_reason == "length"
