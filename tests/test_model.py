import math

import pytest
import torch

from lightning_llm.model import GPT, GPTConfig, KVCache, flops_per_token

VARIANTS = [
    dict(),
    dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False),
    dict(position="none", tie_embeddings=False),
]


def tiny(**overrides):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32, **overrides))


def test_loss_at_init_is_near_uniform():
    model = tiny()
    idx, targets = torch.randint(0, 50, (2, 8, 24))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50)) < 0.1


@pytest.mark.parametrize("options", VARIANTS)
def test_kv_cache_generation_matches_full_forward(options):
    model = tiny(**options).eval()
    prompt = torch.randint(0, 50, (2, 5))
    with_cache = model.generate(prompt, 15, temperature=0)
    without = model.generate(prompt, 15, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    # and the cached logits equal a full forward pass at every position
    with torch.no_grad():
        full_logits, _ = model(with_cache[:, :-1], with_cache[:, 1:])
        cache = KVCache(model.config, 2, "cpu", torch.float32)
        step_logits = [model(with_cache[:, :5], cache=cache)[0]]
        for t in range(5, with_cache.size(1) - 1):
            step_logits.append(model(with_cache[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(step_logits[1:], 1), full_logits[:, 5:], atol=1e-5, rtol=1e-4)


def test_generation_runs_past_the_context_window():
    model = tiny()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 60, temperature=1.0, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 63)


def test_training_step_lowers_the_loss():
    model = tiny()
    batch = torch.randint(0, 50, (4, 25))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_flops_per_token_counts_six_n_plus_attention():
    model = tiny()
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()
    assert flops_per_token(model) == 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30), "divisible by n_head"),
    (dict(n_kv_head=3), "divisible by n_kv_head"),
    (dict(position="alibi"), "position"),
    (dict(position="rope", n_embd=36, n_head=4), "even head size"),
])
def test_impossible_configs_fail_clearly(bad, message):
    base = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32)
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**base, **bad})


@pytest.mark.parametrize("preset, params", [("gpt-nano", None), ("gpt-micro", None),
                                            ("gpt2-124m", 124_439_808), ("llama-small", None)])
def test_every_preset_builds(preset, params):
    from conftest import compose_config

    from lightning_llm.config import to_dataclass

    cfg = compose_config("train", [f"model={preset}"])
    vocab = 50257 if preset == "gpt2-124m" else 90
    config = to_dataclass(GPTConfig, cfg.model, "model", vocab_size=vocab)
    if params:  # GPT-2 small as published: 124M with tied embeddings and learned positions
        with torch.device("meta"):
            assert sum(p.numel() for p in GPT(config).parameters()) == params
