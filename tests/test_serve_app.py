"""The app in process (httpx's ASGI transport, the engine running): the request time limit."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch

from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.serving.app import create_app
from lightning_llm.serving.service import Service
from lightning_llm.serving.settings import ServeSettings


@pytest.fixture(scope="module")
def service(tmp_path_factory, prepared):
    tokenizer_json = prepared.tokenizer_path.read_text()
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_str(tokenizer_json).get_vocab_size(), block_size=512, n_layer=4,
                          n_head=4, n_embd=128, position="rope"))
    folder = save_artifact(model, tokenizer_json, tmp_path_factory.mktemp("app") / "model",
                           manifest=new_manifest(produced_by="test", tokenizer_json=tokenizer_json))
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
