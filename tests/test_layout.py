"""Weights laid out for decoding (model/layout.py): the same numbers as nn.Linear, only stored
so that a decode step streams them faster; applied at load by prepare_for_inference."""

import copy

import pytest
import torch
import torch.nn as nn

from lightning_llm.model.generation import prepare_for_inference, stream
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.layout import LAYOUTS, LaidOutLinear, choose_layout, lay_out


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


def model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=48, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize("variant", [{}, dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2,
                                              bias=False, tie_embeddings=False),
                                     dict(n_embd=256)])  # wide enough that two threads split its weights
@pytest.mark.parametrize("threads", [1, 2])
def test_a_laid_out_model_gives_the_same_logits_and_greedy_tokens(variant, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the rule's split, whatever this machine has
    base = model(**variant)
    laid = prepare_for_inference(copy.deepcopy(base), torch.float32)
    assert not any(isinstance(m, nn.Linear) for m in laid.modules())  # every linear layer was laid out
    split = {m.groups for m in laid.modules() if isinstance(m, LaidOutLinear)} == {1, 2}
    assert split == (threads == 2 and variant.get("n_embd") == 256)
    assert all(isinstance(getattr(b, n).qkv if n == "attn" else getattr(b, n).up, LaidOutLinear)
               for b in laid.blocks for n in ("attn", "mlp"))
    idx = torch.randint(0, 50, (3, 20))
    with torch.inference_mode():
        torch.testing.assert_close(laid(idx, every_position=True)[0], base(idx, every_position=True)[0],
                                   rtol=1e-5, atol=1e-5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]

    def greedy(m):
        out = {}
        for step in stream(m, prompts, max_new_tokens=12, temperature=0):
            for token in step:
                out.setdefault(token.row, []).append(token.id)
        return out

    assert greedy(laid) == greedy(base)
    # the tied table is untouched: the embedding still reads the checkpoint's own tensor
    assert torch.equal(laid.tok_emb.weight, base.tok_emb.weight)


def test_bf16_and_quantized_weights_are_left_as_they_are():
    half = model().to(torch.bfloat16)
    assert lay_out(half) == {} and isinstance(half.blocks[0].attn.qkv, nn.Linear)

    class Marked(torch.Tensor):  # a tensor subclass, as torchao's quantized weights are
        pass

    quantized = model()
    quantized.blocks[0].mlp.up.weight = nn.Parameter(quantized.blocks[0].mlp.up.weight.detach().as_subclass(Marked))
    chosen = lay_out(quantized)
    assert "blocks.0.mlp.up" not in chosen and "blocks.0.attn.qkv" in chosen
