"""Sampling and streaming generation: the cache path equals full recompute, token for token."""

import pytest
import torch
import torch.nn.functional as F

from lightning_llm.model import GPT, GPTConfig, KVCache, sample, stream
from lightning_llm.model.sampling import logprobs

VOCAB, BLOCK = 65, 48
CONFIGS = {
    "learned": dict(),
    "rope-gqa": dict(position="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False),
    "no-positions": dict(position="none", tie_embeddings=False),
}


def tiny(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64, **options)).eval()


def prompts_of(*lengths, seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def collect(steps, n) -> tuple[list[list[int]], list[str | None]]:
    tokens, reasons = [[] for _ in range(n)], [None] * n
    for step in steps:
        for t in step:
            assert reasons[t.row] is None, "a row yielded after it finished"
            tokens[t.row].append(t.id)
            reasons[t.row] = t.finish_reason
    return tokens, reasons


def full_recompute(model, prompt, n) -> list[int]:
    """Greedy decoding without a cache: the whole sequence through the model for every token."""
    return model.generate(torch.tensor([prompt]), n, temperature=0, use_cache=False)[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_greedy_batch_equals_full_recompute_per_prompt(name):
    model = tiny(**CONFIGS[name])
    prompts = prompts_of(1, 5, 17, 30)
    tokens, reasons = collect(stream(model, prompts, max_new_tokens=17, temperature=0), len(prompts))
    assert tokens == [full_recompute(model, p, 17) for p in prompts]
    assert reasons == ["length"] * 4


@pytest.mark.parametrize("name", CONFIGS)
def test_per_row_cache_logits_equal_a_full_forward(name):
    """Prefill unequal prompts together, then decode: each row's logits are its own full forward's."""
    model = tiny(**CONFIGS[name])
    prompts = prompts_of(3, 11, 7)
    longest = max(map(len, prompts))
    cache = KVCache(model.config, len(prompts), "cpu", torch.float32)
    with torch.no_grad():
        model(torch.tensor([p + [0] * (longest - len(p)) for p in prompts]), cache=cache)
        cache.lengths.copy_(torch.tensor([len(p) for p in prompts]))  # right padding lies past each length
        nxt = torch.randint(0, VOCAB, (len(prompts), 4))
        steps = [model(nxt[:, i:i + 1], cache=cache)[0][:, -1] for i in range(4)]
        for r, p in enumerate(prompts):
            full, _ = model(torch.tensor([p + nxt[r].tolist()]), every_position=True)
            torch.testing.assert_close(torch.stack([s[r] for s in steps]), full[0, len(p):], atol=1e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [len(p) + 4 for p in prompts]


def test_rows_leave_and_the_rest_decode_on():
    """Rows finishing at different steps (the last row moves into the freed cache row) change nothing."""
    model = tiny(**CONFIGS["rope-gqa"])
    prompts = prompts_of(2, 9, 4, 13, 6)
    lengths = [3, 20, 1, 11, 7]
    tokens = [[] for _ in prompts]
    batch_sizes = []
    from lightning_llm.model.generation import Batch, Row

    batch = Batch(model, len(prompts))
    batch.add([Row(p, n, temperature=0, key=i) for i, (p, n) in enumerate(zip(prompts, lengths))])
    with torch.inference_mode():
        while batch.rows:
            batch_sizes.append(len(batch))
            for t in batch.step():
                tokens[t.row].append(t.id)
    assert tokens == [full_recompute(model, p, n) for p, n in zip(prompts, lengths)]
    assert batch_sizes[0] == 5 and batch_sizes[-1] == 1


def test_a_row_that_fills_the_window_ends_with_length_or_slides():
    model = tiny()
    prompt = prompts_of(40)[0]
    tokens, reasons = collect(stream(model, [prompt], max_new_tokens=100, temperature=0), 1)
    assert len(prompt) + len(tokens[0]) == BLOCK and reasons == ["length"]
    tokens, reasons = collect(stream(model, [prompt], max_new_tokens=100, temperature=0, slide=True), 1)
    assert len(tokens[0]) == 100 and reasons == ["length"]
    # generate slides the same way
    assert model.generate(torch.tensor([prompt]), 100, temperature=0)[0, 40:].tolist() == tokens[0]


def test_a_prompt_that_leaves_no_room_is_refused_with_both_numbers():
    model = tiny()
    with pytest.raises(ValueError, match=r"48 tokens.*block_size 48.*at most 47"):
        next(stream(model, prompts_of(48), max_new_tokens=1, temperature=0))
    with pytest.raises(ValueError, match="empty"):
        next(stream(model, [[]], max_new_tokens=1, temperature=0))


def test_generate_leaves_the_mode_to_the_caller():
    model = tiny(dropout=0.1)
    model.train()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    assert model.training
    model.eval()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    assert not model.training


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch():
    model = tiny()
    prompts = prompts_of(4, 12, 7)
    settings = dict(max_new_tokens=25, temperature=1.0, top_k=20, top_p=0.9)

    def seeded(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together, _ = collect(stream(model, prompts, generators=seeded([1, 2, 3]), **settings), 3)
    again, _ = collect(stream(model, prompts, generators=seeded([1, 2, 3]), **settings), 3)
    alone, _ = collect(stream(model, prompts[1:2], generators=seeded([2]), **settings), 1)
    assert together == again and together[1] == alone[0]
    assert together[0] != together[1][:len(together[0])]  # different seeds, different samples


def test_stop_sequences_and_eos_end_a_row_on_their_last_token():
    model = tiny()
    prompt = prompts_of(5)[0]
    free = full_recompute(model, prompt, 30)
    stop = free[6:8]
    end = next(i for i in range(1, len(free)) if free[i - 1:i + 1] == stop) + 1
    tokens, reasons = collect(stream(model, [prompt], max_new_tokens=30, temperature=0, stop=[stop]), 1)
    assert tokens[0] == free[:end] and reasons == ["stop"]
    eos = free[10]
    tokens, reasons = collect(stream(model, [prompt], max_new_tokens=30, temperature=0, eos_id=eos), 1)
    assert tokens[0] == free[:free.index(eos) + 1] and reasons == ["stop"]


def test_should_stop_is_polled_before_every_forward():
    model = tiny()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3

    steps = list(stream(model, prompts_of(4, 6), max_new_tokens=30, temperature=0, should_stop=should_stop))
    assert len(steps) == 3 and len(forwards) == 1 + 3  # the prefill and three steps, nothing after


def test_stream_logprobs_are_the_models_distribution():
    model = tiny()
    prompt = prompts_of(6)[0]
    steps = list(stream(model, [prompt], max_new_tokens=8, temperature=0.7, logprobs=3,
                        generators=torch.Generator().manual_seed(0)))
    ids = [step[0].id for step in steps]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([prompt + ids]), every_position=True)[0][0], -1)
    for i, step in enumerate(steps):
        expected = logp[len(prompt) - 1 + i]
        assert step[0].logprob == pytest.approx(expected[ids[i]].item(), abs=1e-4)
        top = expected.topk(3)
        assert [t for t, _ in step[0].top_logprobs] == top.indices.tolist()
        assert [lp for _, lp in step[0].top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_nothing_to_generate_ends_at_once():
    steps = list(stream(tiny(), prompts_of(3, 5), max_new_tokens=0, temperature=0))
    assert [[(t.row, t.id, t.finish_reason) for t in step] for step in steps] == [[(0, None, "length"),
                                                                                    (1, None, "length")]]


# --- the pure sampling function on hand-made logits ---------------------------------------------------------

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (.5), 3 (.3), 2 (.15), 0 (.05)


def support(n=4000, **settings) -> dict[int, float]:
    logits = PROBS.log().expand(n, -1)
    ids = sample(logits, generator=torch.Generator().manual_seed(0), **settings)
    counts = torch.bincount(ids, minlength=4).float() / n
    return {i: round(c, 2) for i, c in enumerate(counts.tolist()) if c > 0}


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0]])
    assert sample(logits, temperature=0).tolist() == [1, 0]


def test_top_k_and_top_p_keep_the_right_support():
    assert set(support(temperature=1.0)) == {0, 1, 2, 3}
    assert set(support(temperature=1.0, top_k=2)) == {1, 3}
    assert set(support(temperature=1.0, top_p=0.8)) == {1, 3}  # .5 + .3 reaches .8
    assert set(support(temperature=1.0, top_p=0.81)) == {1, 2, 3}
    assert set(support(temperature=1.0, top_p=0.01)) == {1}  # the most likely token always stays
    # top-k first, then the nucleus of what is left: .5/.95, .3/.95 = .84 reaches .8
    assert set(support(temperature=1.0, top_k=3, top_p=0.8)) == {1, 3}
    kept = support(temperature=1.0, top_p=0.8)
    assert kept[1] == pytest.approx(0.5 / 0.8, abs=0.03) and kept[3] == pytest.approx(0.3 / 0.8, abs=0.03)


def test_temperature_sharpens_and_flattens():
    assert support(temperature=0.25)[1] > 0.85
    assert support(temperature=4.0)[0] > 0.15


def test_per_row_generators_make_a_rows_draw_its_own():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    rows = sample(logits, temperature=1.0, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = sample(logits[1:2], temperature=1.0, generator=[torch.Generator().manual_seed(8)])
    assert rows[1] == alone[0]


def test_logprobs_reports_the_raw_distribution():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    chosen, values, ids = logprobs(logits, torch.tensor([2]), 2)
    logp = F.log_softmax(logits, -1)[0]
    assert chosen.item() == pytest.approx(logp[2].item())
    assert ids.tolist() == [[1, 2]] and values[0].tolist() == pytest.approx(logp[[1, 2]].tolist())


# --- bf16 decoding, the reused KV cache, the dtype option -------------------------------------------------------

def trained(**options) -> GPT:
    """A tiny model trained a little on a fixed pattern, so that its predictions are confident (an
    untrained model's near-uniform logits make greedy choices that any rounding flips)."""
    model = tiny(**options).train()
    pattern = torch.tensor(prompts_of(37, seed=5)[0] * 4)
    x, y = pattern[:-1].unfold(0, BLOCK, 5), pattern[1:].unfold(0, BLOCK, 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", ["learned", "rope-gqa"])
def test_bf16_decoding_gives_the_same_greedy_tokens_and_loss_within_half_a_percent(name):
    from lightning_llm.model.generation import copy_for_inference

    model = trained(**CONFIGS[name])
    half = copy_for_inference(model, torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    if name == "rope-gqa":
        assert half.rope_cos.dtype == torch.float32  # positions keep their precision
    prompts = [p[:n] for p, n in zip(prompts_of(37, 37, seed=5) * 2, (3, 9, 14, 20))]
    full, _ = collect(stream(model, prompts, max_new_tokens=20, temperature=0), len(prompts))
    fast, _ = collect(stream(half, prompts, max_new_tokens=20, temperature=0), len(prompts))
    assert fast == full
    text = torch.tensor([prompts_of(40, seed=9)[0]])  # loss (so bits per byte) on other tokens
    with torch.no_grad():
        loss32 = model(text[:, :-1], text[:, 1:])[1].item()
        loss16 = half(text[:, :-1], text[:, 1:])[1].item()
    assert abs(loss16 - loss32) / loss32 < 0.005


def test_the_kv_cache_is_reused_across_calls_and_never_shared_by_two_at_once():
    model = tiny()
    prompts = prompts_of(5, 9)
    first, _ = collect(stream(model, prompts, max_new_tokens=6, temperature=0), 2)
    steps = stream(model, prompts_of(3), max_new_tokens=6, temperature=0)  # one row: a view of the 2-row cache
    next(steps)
    from lightning_llm.model import generation

    held = generation._pool.get(model, [])
    assert held == []  # the one cache is in use by the open stream
    other, _ = collect(stream(model, prompts, max_new_tokens=6, temperature=0), 2)  # meanwhile: a cache of its own
    assert other == first
    list(steps)
    storage = {c.keys[0].data_ptr() for c in generation._pool[model]}
    again, _ = collect(stream(model, prompts, max_new_tokens=6, temperature=0), 2)
    assert again == first  # stale rows of the reused cache change nothing
    assert {c.keys[0].data_ptr() for c in generation._pool[model]} == storage  # nothing new allocated


def test_dtype_option_refuses_emulated_bf16_and_unknown_names(monkeypatch):
    from lightning_llm import measured
    from lightning_llm.model.generation import inference_dtype

    model = tiny()
    with pytest.raises(ValueError, match="float32, bfloat16 or auto"):
        inference_dtype(model, "half")
    assert inference_dtype(model, "float32")[0] == torch.float32
    monkeypatch.setattr(measured, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="no native bf16"):
        inference_dtype(model, "bfloat16")
    dtype, why = inference_dtype(model, "auto")  # no native bf16: fp32 without measuring
    assert dtype == torch.float32 and "not native" in why


def test_dtype_auto_measures_once_per_machine_and_shape(monkeypatch, tmp_path):
    from lightning_llm import measured
    from lightning_llm.model import generation

    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measured, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    calls = []

    def timed(fns, **kwargs):
        calls.append(sorted(fns))
        for fn in fns.values():
            fn()  # really decode, in both dtypes
        return {"float32": 2.0, "bfloat16": 1.0}

    monkeypatch.setattr(measured, "interleaved_best", timed)
    model = tiny()
    dtype, why = generation.inference_dtype(model, "auto", batch=2)
    assert dtype == torch.bfloat16 and "bfloat16" in why and calls == [["bfloat16", "float32"]]
    assert generation.inference_dtype(model, "auto", batch=2)[0] == torch.bfloat16 and len(calls) == 1  # cached
    generation.inference_dtype(model, "auto", batch=4)  # another batch: measured again
    assert len(calls) == 2
    assert next(model.parameters()).dtype == torch.float32  # measuring never touches the model itself
    monkeypatch.setattr(measured, "interleaved_best", lambda fns, **kwargs: {"float32": 1.05, "bfloat16": 1.0})
    dtype, why = generation.inference_dtype(model, "auto", batch=8)  # bf16 5% faster: a tie, fp32 stays
    assert dtype == torch.float32 and "auto: float32" in why
