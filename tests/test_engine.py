"""The continuous-batching engine: batching changes no result, and every request ends cleanly."""

import asyncio
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from lightning_llm.model import GPT, GPTConfig
from lightning_llm.serving.engine import Engine, EngineClosed, QueueFull, SamplingParams

VOCAB, BLOCK = 65, 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64, position="rope",
                         n_kv_head=2)).eval()


@pytest.fixture
def engine_of(model):
    engines = []

    def make(**options):
        engine = Engine(model, **options)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(drain_timeout=0)


def prompts_of(*lengths, seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def tokens_of(handle) -> list[int]:
    events = list(handle.events())
    assert events[-1].finish_reason is not None and all(e.finish_reason is None for e in events[:-1])
    return [e.token_id for e in events if e.token_id is not None]


def first_event(handle):
    it = handle.events()
    return it, next(it)


def test_concurrent_greedy_requests_equal_their_one_at_a_time_outputs(model, engine_of):
    prompts = prompts_of(3, 17, 1, 30, 8, 12, 5)
    lengths = [25, 10, 33, 20, 5, 28, 15]
    alone = engine_of(batching=False)
    expected = [tokens_of(alone.submit(p, SamplingParams(max_tokens=n, temperature=0)))
                for p, n in zip(prompts, lengths)]
    # and one at a time is greedy decoding without any cache
    assert expected[0] == model.generate(torch.tensor([prompts[0]]), 25, temperature=0, use_cache=False)[0, 3:].tolist()

    engine = Engine(model, max_batch_size=4)
    handles = [engine.submit(p, SamplingParams(max_tokens=n, temperature=0)) for p, n in zip(prompts, lengths)]
    engine.start()  # all seven wait: four start together, the others join as rows finish
    results = [None] * len(prompts)

    def client(i):
        results[i] = tokens_of(handles[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected
    sizes = engine.stats()["batch_sizes"]
    assert sizes[0] == 4 and sizes.count(4) > 10 and sizes[-1] == 1  # rows joined and left between steps
    assert engine.stats()["tokens"] == sum(lengths)
    engine.shutdown(drain_timeout=0)


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(engine_of):
    prompt = prompts_of(9)[0]
    params = SamplingParams(max_tokens=30, temperature=1.0, top_k=30, top_p=0.9, seed=7)
    alone = tokens_of(engine_of(batching=False).submit(prompt, params))
    engine = engine_of(max_batch_size=8)
    others = [engine.submit(p, SamplingParams(max_tokens=30, temperature=t, seed=s))
              for p, t, s in zip(prompts_of(4, 20, 11, seed=2), (0.5, 1.3, 0.0), (1, None, 3))]
    together = tokens_of(engine.submit(prompt, params))
    assert together == alone
    assert tokens_of(engine.submit(prompt, SamplingParams(max_tokens=30, temperature=1.0, seed=8))) != alone
    for handle in others:
        tokens_of(handle)


def test_cancel_frees_the_slot_and_stops_compute(engine_of):
    engine = engine_of(max_batch_size=1, slide=True)
    long = engine.submit(prompts_of(5)[0], SamplingParams(max_tokens=100_000, temperature=0))
    it, _ = first_event(long)
    long.cancel()
    rest = list(it)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].token_id is None
    computed = 1 + sum(e.token_id is not None for e in rest)
    short = tokens_of(engine.submit(prompts_of(3)[0], SamplingParams(max_tokens=10, temperature=0)))
    assert len(short) == 10  # the single slot was freed
    time.sleep(0.1)
    stats = engine.stats()
    assert stats["tokens"] == computed + 10 and stats["active"] == 0  # nothing computed for nobody


def test_abandoning_the_events_cancels(engine_of):
    engine = engine_of(max_batch_size=1, slide=True)
    handle = engine.submit(prompts_of(5)[0], SamplingParams(max_tokens=100_000, temperature=0))
    it, _ = first_event(handle)
    it.close()
    assert handle.cancelled
    assert len(tokens_of(engine.submit(prompts_of(2)[0], SamplingParams(max_tokens=4, temperature=0)))) == 4


def test_a_full_queue_refuses_and_a_queued_cancel_leaves_it(engine_of):
    engine = engine_of(max_batch_size=1, max_queue=2, slide=True)
    busy = engine.submit(prompts_of(5)[0], SamplingParams(max_tokens=100_000, temperature=0))
    running, _ = first_event(busy)  # running: the queue is empty again (keep the iterator: closing it cancels)
    queued = [engine.submit([1, 2], SamplingParams(max_tokens=3, temperature=0)) for _ in range(2)]
    assert engine.stats()["queue_depth"] == 2
    with pytest.raises(QueueFull):
        engine.submit([1, 2], SamplingParams(max_tokens=3, temperature=0))
    queued[0].cancel()
    assert [e.finish_reason for e in queued[0].events()] == ["cancelled"]
    again = engine.submit([1, 2], SamplingParams(max_tokens=3, temperature=0))
    busy.cancel()
    assert list(running)[-1].finish_reason == "cancelled"
    assert len(tokens_of(queued[1])) == 3 and len(tokens_of(again)) == 3


def test_shutdown_drains_in_flight_requests_then_refuses(model):
    engine = Engine(model, max_batch_size=2)
    engine.start()
    handles = [engine.submit(p, SamplingParams(max_tokens=12, temperature=0)) for p in prompts_of(3, 7, 4, 9)]
    engine.shutdown(drain_timeout=60)
    assert [len(tokens_of(h)) for h in handles] == [12] * 4  # queued ones finished too
    assert not engine.thread.is_alive()
    with pytest.raises(EngineClosed):
        engine.submit([1], SamplingParams(max_tokens=1))


def test_shutdown_cancels_what_outlives_the_drain(model):
    engine = Engine(model, max_batch_size=1, slide=True)
    engine.start()
    long = engine.submit([1, 2, 3], SamplingParams(max_tokens=10_000_000, temperature=0))
    waiting = engine.submit([4], SamplingParams(max_tokens=5, temperature=0))
    rest, _ = first_event(long)
    engine.shutdown(drain_timeout=0.2)
    assert list(rest)[-1].finish_reason == "cancelled"
    assert [e.finish_reason for e in waiting.events()] == ["cancelled"]
    assert not engine.thread.is_alive()


def test_prompt_logprobs_and_loss_equal_a_full_forward(model, engine_of):
    engine = engine_of(max_batch_size=4)
    prompt = prompts_of(20)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), every_position=True)[0][0]
    logp = F.log_softmax(logits, -1)
    handles = [engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0, logprobs=3, prompt_logprobs=True))
               for n in (0, 5)]
    events = [list(h.events()) for h in handles]
    assert [(e.token_id, e.finish_reason) for e in events[0]] == [(None, "length")]  # scored, nothing generated
    for handle in handles:
        scored = handle.prompt_logprobs
        assert len(scored) == len(prompt) and scored[0] is None
        for t in range(1, len(prompt)):
            chosen, top = scored[t]
            assert chosen == pytest.approx(logp[t - 1, prompt[t]].item(), abs=1e-4)
            assert [i for i, _ in top] == logp[t - 1].topk(3).indices.tolist()
        expected_loss = F.cross_entropy(logits[:-1], torch.tensor(prompt[1:])).item()
        assert handle.prompt_loss == pytest.approx(expected_loss, abs=1e-5)
    # the generated tokens' logprobs are the model's too
    first = events[1][0]
    assert first.logprob == pytest.approx(logp[-1, first.token_id].item(), abs=1e-4)
    # a prompt that fills the window can be scored (nothing generated), not continued
    full = prompts_of(BLOCK, seed=3)[0]
    assert len(engine.submit(full, SamplingParams(max_tokens=0, prompt_logprobs=True)).prompt) == BLOCK
    with pytest.raises(ValueError, match=rf"{BLOCK} tokens.*block_size {BLOCK}.*at most {BLOCK - 1}"):
        engine.submit(full, SamplingParams(max_tokens=1))


def test_stop_tokens_end_a_request_with_the_token(engine_of):
    engine = engine_of()
    prompt = prompts_of(6)[0]
    free = tokens_of(engine.submit(prompt, SamplingParams(max_tokens=20, temperature=0)))
    stop = free[7]
    events = list(engine.submit(prompt, SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(stop,))).events())
    assert [e.token_id for e in events] == free[:free.index(stop) + 1]
    assert events[-1].finish_reason == "stop"


def test_async_events_match_the_blocking_ones(engine_of):
    engine = engine_of(max_batch_size=4)
    prompts = prompts_of(4, 9, 2)
    expected = [tokens_of(engine.submit(p, SamplingParams(max_tokens=15, temperature=0))) for p in prompts]

    async def client(prompt):
        handle = engine.submit(prompt, SamplingParams(max_tokens=15, temperature=0))
        return [e.token_id async for events in handle.abatches() for e in events if e.token_id is not None]

    async def main():
        return await asyncio.gather(*(client(p) for p in prompts))

    assert asyncio.run(main()) == expected


def test_a_failing_step_fails_its_requests_not_the_engine(model, engine_of):
    engine = engine_of(max_batch_size=2)
    calls = {"n": 0}

    def broken(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")

    hook = model.register_forward_pre_hook(broken, with_kwargs=True)
    try:
        events = list(engine.submit([1, 2, 3], SamplingParams(max_tokens=10, temperature=0)).events())
    finally:
        hook.remove()
    assert events[-1].finish_reason == "error"
    assert len(tokens_of(engine.submit([1, 2, 3], SamplingParams(max_tokens=5, temperature=0)))) == 5


def test_bad_params_are_refused_at_submit(engine_of):
    engine = engine_of()
    for params, message in [(SamplingParams(max_tokens=-1), "max_tokens"),
                            (SamplingParams(max_tokens=1, top_p=0), "top_p"),
                            (SamplingParams(max_tokens=1, temperature=-1), "temperature"),
                            (SamplingParams(max_tokens=1, top_k=0), "top_k")]:
        with pytest.raises(ValueError, match=message):
            engine.submit([1], params)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([VOCAB], SamplingParams(max_tokens=1))


def test_async_batches_hand_over_the_tokens_that_came_together_but_never_hold_the_first_or_last(engine_of):
    engine = engine_of(max_batch_size=2)
    prompt = prompts_of(6)[0]
    expected = tokens_of(engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0)))

    async def batches(interval):
        handle = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0))
        start = time.perf_counter()
        out = [events async for events in handle.abatches(interval)]
        return out, time.perf_counter() - start

    each, _ = asyncio.run(batches(0.0))
    assert [e.token_id for events in each for e in events if e.token_id is not None] == expected
    # A 60 s interval: the first token is handed over at once, the rest (held) comes with the
    # final event, which is never held back.
    held, seconds = asyncio.run(batches(60.0))
    assert seconds < 30 and 1 <= len(held) <= 2
    assert [e.token_id for events in held for e in events if e.token_id is not None] == expected
    assert held[-1][-1].finish_reason == "length" and len(held[-1]) > 1
    assert engine.stats()["active"] == 0


def test_a_dead_engine_thread_ends_every_request_and_refuses_new_ones(model, engine_of, monkeypatch):
    """A bug outside a step (here: dropping a cancelled row) kills the engine thread; nobody may
    be left waiting for it, and new requests are refused rather than queued forever."""
    engine = engine_of(max_batch_size=2, slide=True)
    running = engine.submit(prompts_of(5)[0], SamplingParams(max_tokens=100_000, temperature=0))
    victim = engine.submit(prompts_of(4)[0], SamplingParams(max_tokens=100_000, temperature=0))
    queued_behind = engine.submit(prompts_of(3)[0], SamplingParams(max_tokens=5, temperature=0))
    it, _ = first_event(running)
    first_event(victim)

    def broken(self, row):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("lightning_llm.serving.engine.Batch.remove", broken)
    victim.cancel()
    results = {}

    def drain(name, events):
        results[name] = [e.finish_reason for e in events][-1]

    threads = [threading.Thread(target=drain, args=("running", it), daemon=True),
               threading.Thread(target=drain, args=("queued", queued_behind.events()), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {"running": "error", "queued": "error"}
    assert not engine.alive
    with pytest.raises(EngineClosed):
        engine.submit([1, 2], SamplingParams(max_tokens=3))
