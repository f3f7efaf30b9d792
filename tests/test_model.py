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


# --- an honest MFU and precision=auto by measurement ------------------------------------------------------------

def test_mfu_can_never_exceed_one():
    from lightning_llm.training.callbacks import model_flops_utilization

    assert model_flops_utilization(50.0, 200.0) == (0.25, 200.0)
    mfu, peak = model_flops_utilization(300.0, 200.0)  # a peak measured at a bad moment
    assert mfu == 1.0 and peak == 300.0


def test_the_throughput_callback_reports_mfu_at_most_one_with_a_peak_too_low():
    from types import SimpleNamespace

    from lightning_llm.training.callbacks import Throughput

    logged = {}
    module = SimpleNamespace(model=tiny(), device=torch.device("cpu"), log_dict=lambda d, **kw: logged.update(d))
    trainer = SimpleNamespace(precision="32-true", accumulate_grad_batches=1, log_every_n_steps=1, global_step=1,
                              world_size=1)
    callback = Throughput(peak_tflops=1e-9)  # 1 kFLOP/s: far below anything real
    callback.on_fit_start(trainer, module)
    callback.on_train_batch_start(trainer, module, None, 0)
    callback.elapsed = 0.5
    callback.on_train_batch_end(trainer, module, None, (torch.zeros(4, 24, dtype=torch.long),), 0)
    assert 0 < logged["perf/mfu"] <= 1.0


def test_matmul_peak_is_the_best_size_and_cached_per_machine_and_dtype(monkeypatch, tmp_path):
    from lightning_llm import measured

    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    timed = []

    def flops(device, dtype, size, seconds):
        timed.append((dtype, size))
        return {64: 3.0, 128: 5.0}[size]

    monkeypatch.setattr(measured, "matmul_flops", flops)
    peak = measured.matmul_peak("cpu", torch.float32, sizes=(64, 128))
    assert (peak["flops"], peak["size"]) == (5.0, 128) and len(timed) == 2
    assert measured.matmul_peak("cpu", torch.float32, sizes=(64, 128))["flops"] == 5.0 and len(timed) == 2
    measured.matmul_peak("cpu", torch.bfloat16, sizes=(64, 128))
    assert len(timed) == 4  # another dtype: measured
    monkeypatch.undo()
    real = measured.matmul_flops(torch.device("cpu"), torch.float32, 64, seconds=0.01)
    assert 1e6 < real < 1e14  # FLOP/s of a real 64 x 64 matmul: something sane


def test_precision_auto_picks_the_faster_measured_and_caches_it(monkeypatch, tmp_path, caplog):
    from lightning_llm import measured
    from lightning_llm.stages.train import resolve_precision
    from lightning_llm.training import precision

    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measured, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32)
    rates = precision.tokens_per_s(config, 4, torch.device("cpu"), rounds=1)  # real steps, both precisions
    assert set(rates) == {"32-true", "bf16-mixed"} and all(r > 0 for r in rates.values())
    measured_calls = []

    def fake(config, batch_size, device):
        measured_calls.append(batch_size)
        return {"32-true": 900.0, "bf16-mixed": 600.0}  # bf16 exists here, and is slower

    monkeypatch.setattr(precision, "tokens_per_s", fake)
    with caplog.at_level("INFO"):
        assert resolve_precision("auto", "cpu", model_config=config, batch_size=8) == "32-true"
    assert "32-true 900 tokens/s, bf16-mixed 600 tokens/s" in caplog.text
    assert resolve_precision("auto", "cpu", model_config=config, batch_size=8) == "32-true"
    assert measured_calls == [8]  # the second run read the cache
    assert resolve_precision("bf16-mixed", "cpu", model_config=config, batch_size=8) == "bf16-mixed"
    for bf16_rate, chosen in ((930.0, "32-true"), (990.0, "bf16-mixed")):  # within noise, fp32; clearly faster, bf16
        monkeypatch.setattr(precision, "tokens_per_s", lambda *args, r=bf16_rate: {"32-true": 900.0, "bf16-mixed": r})
        assert precision.choose_precision(config, 8, use_cache=False)[0] == chosen
    monkeypatch.setattr(measured, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("auto", "cpu", model_config=config, batch_size=16) == "32-true"  # emulated bf16
    assert measured_calls == [8]


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_path_on_the_cpu(tmp_path):
    """bench/gpu.py --smoke: training with both NaN guards (the device guard skips a poisoned
    step), generation at batch 1 and 32, the serving engine; the tables land in the file."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.md"
    subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--no-compile", "--out", str(out)], cwd=root,
                   check=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(root),
                                                  "LLM_CACHE_DIR": str(tmp_path / "cache")})
    text = out.read_text()
    assert "| eager | per-step sync |" in text and "| eager | on device |" in text
    assert "left the weights unchanged" in text
    assert "| batch 1 |" in text and "| batch 32 |" in text and "serving engine:" in text
