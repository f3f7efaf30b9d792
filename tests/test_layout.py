"""Weights laid out for decoding (model/layout.py): the same numbers as nn.Linear, only stored
so that a decode step streams them faster (MKL's layout for single fp32 rows, oneDNN's packed
format otherwise); applied at load by prepare_for_inference."""

import copy

import pytest
import torch
import torch.nn as nn

from lightning_llm.model import layout
from lightning_llm.model.generation import prepare_for_inference, stream
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.layout import LAYOUTS, LaidOutLinear, PackedLinear, can_pack, choose_layout, lay_out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_a_laid_out_linear_computes_what_nn_linear_computes(layout, groups, bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 36, bias=bias)
    laid = LaidOutLinear(linear.weight, linear.bias, groups=groups, layout=layout)
    for shape in [(1, 24), (5, 24), (2, 7, 24), (3, 1, 24)]:  # a decode row, a batch, a prefill, a decode batch
        x = torch.randn(shape)
        torch.testing.assert_close(laid(x), linear(x), rtol=1e-5, atol=1e-6)
        assert laid(x).shape == linear(x).shape


def test_a_layout_that_does_not_divide_the_outputs_is_refused():
    with pytest.raises(ValueError, match="cannot lay out"):
        LaidOutLinear(torch.zeros(10, 4), None, groups=3, layout="rows")


def test_the_rule_keeps_each_slices_longer_side_contiguous_and_splits_per_thread():
    assert choose_layout(1536, 384, threads=2) == (2, "columns")  # a slice (768, 384): wide, stored (in, out)
    assert choose_layout(384, 1536, threads=2) == (2, "rows")  # a slice (192, 1536): stored (out, in)
    assert choose_layout(1536, 384, threads=1) == (1, "columns")
    assert choose_layout(65, 384, threads=2) == (1, "rows")  # 65 outputs do not split in two
    assert choose_layout(96, 32, threads=2) == (1, "columns")  # small enough to sit in cache: one slice


needs_onednn = pytest.mark.skipif(not can_pack(torch.float32) or not can_pack(torch.bfloat16),
                                  reason="this torch's oneDNN cannot pack linear weights here")


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_a_packed_linear_computes_what_nn_linear_computes(dtype, bias, gelu):
    torch.manual_seed(0)
    linear = nn.Linear(24, 36, bias=bias).to(dtype)
    single = LaidOutLinear(linear.weight, linear.bias, groups=2, layout="columns") if dtype == torch.float32 else None
    packed = PackedLinear(linear.weight, linear.bias, single=single, gelu=gelu)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for x in [torch.randn(1, 24), torch.randn(5, 24), torch.randn(2, 7, 24), torch.randn(3, 1, 24),
              torch.randn(2, 7, 24)[:, -1:, :]]:  # a row, a batch, a prefill, a decode batch, the LM head's view
        x = x.to(dtype)
        expected = nn.functional.gelu(linear(x), approximate="tanh") if gelu else linear(x)
        torch.testing.assert_close(packed(x).float(), expected.float(), **tolerance)
        assert packed(x).shape == expected.shape and packed(x).dtype == dtype
    twin = copy.deepcopy(packed)  # the opaque oneDNN weight cannot be copied as storage: packed again
    x = torch.randn(4, 24).to(dtype)
    assert torch.equal(twin(x), packed(x)) and twin.packed is not packed.packed


@needs_onednn
def test_single_rows_go_to_the_laid_out_product_and_batches_to_onednn(monkeypatch):
    linear = nn.Linear(24, 36)
    single = LaidOutLinear(linear.weight, linear.bias, groups=1, layout="rows")
    packed = PackedLinear(linear.weight, linear.bias, single=single)
    calls = []
    monkeypatch.setattr(single, "forward", lambda x: calls.append(tuple(x.shape)) or linear(x))
    packed(torch.randn(1, 1, 24))
    packed(torch.randn(8, 1, 24))
    assert calls == [(1, 1, 24)]


def test_can_pack_is_false_without_onednn(monkeypatch):
    can_pack.cache_clear()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    try:
        assert not can_pack(torch.float32)
    finally:
        can_pack.cache_clear()


def model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=48, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def greedy(m, prompts=([1, 2, 3], [4, 5, 6, 7, 8], [9]), tokens=12):
    out = {}
    for step in stream(m, [list(p) for p in prompts], max_new_tokens=tokens, temperature=0):
        for token in step:
            out.setdefault(token.row, []).append(token.id)
    return out


VARIANTS = [{}, dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False),
            dict(n_embd=256)]  # the last wide enough that two threads split its weights


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_laid_out_model_gives_the_same_logits_and_greedy_tokens(variant, threads, packing, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the rule's split, whatever this machine has
    if not packing:  # as on a build whose oneDNN cannot pack: MKL's layout alone
        monkeypatch.setattr(layout, "can_pack", lambda dtype: False)
    elif not can_pack(torch.float32):
        pytest.skip("this torch's oneDNN cannot pack linear weights here")
    base = model(**variant)
    laid = prepare_for_inference(copy.deepcopy(base), torch.float32)
    assert not any(isinstance(m, nn.Linear) for m in laid.modules())  # every linear layer was laid out
    singles = [m for m in laid.modules() if isinstance(m, LaidOutLinear)]
    assert len(singles) == 4 * 2 + 1  # four per block and the head: every layer keeps the layout for single rows
    assert ({m.groups for m in singles} == {1, 2}) == (threads == 2 and variant.get("n_embd") == 256)
    packed = [m for m in laid.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == (len(singles) if packing else 0)
    gelu = variant.get("mlp", "gelu") == "gelu"
    assert all(isinstance(b.mlp.act, nn.Identity) == (packing and gelu) for b in laid.blocks)  # GELU fused
    idx = torch.randint(0, 50, (3, 20))
    with torch.inference_mode():
        torch.testing.assert_close(laid(idx, every_position=True)[0], base(idx, every_position=True)[0],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(laid(idx[:1, :1])[0], base(idx[:1, :1])[0], rtol=1e-5, atol=1e-5)  # one row
    assert greedy(laid) == greedy(base)
    # the tied table is untouched: the embedding still reads the checkpoint's own tensor
    assert torch.equal(laid.tok_emb.weight, base.tok_emb.weight)
    again = copy.deepcopy(laid)  # a prepared model can be copied (its oneDNN weights are packed again)
    assert greedy(again) == greedy(laid)


@needs_onednn
@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_a_bf16_model_is_packed_and_gives_the_logits_of_its_nn_linear_layers(variant):
    base = model(**variant).to(torch.bfloat16)
    packed = prepare_for_inference(copy.deepcopy(base), torch.bfloat16)
    assert all(isinstance(m, PackedLinear) and m.single is None for m in packed.modules()
               if isinstance(m, (nn.Linear, PackedLinear)))
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    idx = torch.randint(0, 50, (3, 20))
    with torch.inference_mode():  # both in bf16: the products round differently, nothing more
        got, expected = (m(idx, every_position=True)[0].float() for m in (packed, base))
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_quantized_weights_and_bf16_without_onednn_are_left_as_they_are(monkeypatch):
    monkeypatch.setattr(layout, "can_pack", lambda dtype: False)
    half = model().to(torch.bfloat16)
    assert lay_out(half) == {} and isinstance(half.blocks[0].attn.qkv, nn.Linear)
    monkeypatch.undo()

    class Marked(torch.Tensor):  # a tensor subclass, as torchao's quantized weights are
        pass

    quantized = model()
    quantized.blocks[0].mlp.up.weight = nn.Parameter(quantized.blocks[0].mlp.up.weight.detach().as_subclass(Marked))
    chosen = lay_out(quantized)
    assert "blocks.0.mlp.up" not in chosen and "blocks.0.attn.qkv" in chosen
    assert isinstance(quantized.blocks[0].mlp.up, nn.Linear)
    assert isinstance(quantized.blocks[0].mlp.act, nn.GELU)  # its GELU stays: nothing to fold it into


@needs_onednn
def test_a_prepared_model_casts_by_packing_again_frees_on_meta_and_refuses_other_devices():
    base = model()
    prepared = prepare_for_inference(copy.deepcopy(base), torch.float32)
    idx = torch.randint(0, 50, (2, 9))
    with torch.inference_mode():
        expected = prepare_for_inference(copy.deepcopy(base), torch.bfloat16)(idx, every_position=True)[0]
        prepared.to(torch.bfloat16)  # cast after packing: each layer packs its weight again, in bf16
        assert {m.packed.dtype for m in prepared.modules() if isinstance(m, PackedLinear)} == {torch.bfloat16}
        torch.testing.assert_close(prepared(idx, every_position=True)[0], expected)
    with pytest.raises(ValueError, match="prepare a freshly loaded model"):
        prepared.to(torch.float16)
    prepared.to("meta")  # what a retired serving version does: nothing of it stays in memory
    assert all(m.packed.device.type == "meta" for m in prepared.modules() if isinstance(m, PackedLinear))
    assert all(t.device.type == "meta" for t in [*prepared.parameters(), *prepared.buffers()])


@needs_onednn
def test_a_deep_copy_keeps_shared_layers_shared_and_the_mode():
    linear = nn.Linear(8, 12)
    packed = PackedLinear(linear.weight, linear.bias).eval()
    pair = nn.ModuleList([packed, packed])
    twin = copy.deepcopy(pair)
    assert twin[0] is twin[1] and twin[0] is not packed and not twin[0].training
