"""HF export and import of pruned models: a pruned MLP (mlp_hidden_size) is any class's
intermediate size; pruned heads (head_size, n_head * head_size < n_embd) only Llama expresses, with
its head_dim. What transformers loads computes our logits, and `llm import` gives the config back."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is made here

import pytest
import torch
from test_export import OURS, hf_folder, logits_of, our_folder

from lightning_llm.compress import importance, structured
from lightning_llm.errors import UserError
from lightning_llm.export import export_hf, import_hf
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is the optional [hf] extra")


def pruned_folder(tmp_path, hf_class: str, kind: str, remove: int):
    options = {**OURS[hf_class], "n_kv_head": None}  # head pruning needs plain multi-head attention
    source = load_artifact(our_folder(tmp_path, options, name=f"{hf_class}-source"))
    model, _ = structured(source.model, kind, importance(source.model, kind, method="weight_norm"), remove)
    return save_artifact(model, source.tokenizer_json, tmp_path / f"{hf_class}-{kind}",
                         manifest=new_manifest(produced_by="test", tokenizer_json=source.tokenizer_json))


@pytest.mark.parametrize(("hf_class", "kind"), [("GPT2LMHeadModel", "mlp"), ("GPTNeoXForCausalLM", "mlp"),
                                                ("LlamaForCausalLM", "mlp"), ("LlamaForCausalLM", "heads")])
def test_a_pruned_model_exports_with_our_logits_and_imports_back_exactly(tmp_path, hf_class, kind):
    from transformers import AutoModelForCausalLM

    ours = load_artifact(pruned_folder(tmp_path, hf_class, kind, remove=2 if kind == "heads" else 37))
    assert (ours.config.head_size, ours.config.mlp_hidden_size) != (None, None)  # really pruned
    export_hf(ckpt=ours.path, out=tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(theirs).__name__ == hf_class
    idx = torch.randint(ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (logits_of(ours.model, idx) - theirs(input_ids=idx).logits).abs().max().item() < 1e-4

    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"| attention heads | {ours.config.n_head} of size {ours.config.head_dim} (" in card

    import_hf(hf=tmp_path / "hf", out=tmp_path / "back")
    back = load_artifact(tmp_path / "back")
    assert back.config == ours.config
    assert all(torch.equal(t, back.model.state_dict()[k]) for k, t in ours.model.state_dict().items())


@pytest.mark.parametrize(("hf_class", "remove", "named"), [
    ("GPT2LMHeadModel", 2, "only LlamaForCausalLM"),
    ("GPTNeoXForCausalLM", 2, "only LlamaForCausalLM"),
    ("LlamaForCausalLM", 1, "divisible by num_attention_heads (3)"),  # transformers checks hidden_size % heads
])
def test_pruned_heads_a_class_cannot_express_are_refused_in_one_line(tmp_path, hf_class, remove, named):
    source = pruned_folder(tmp_path, hf_class, "heads", remove=remove)
    with pytest.raises(UserError) as err:
        export_hf(ckpt=source, out=tmp_path / "hf")
    assert named in str(err.value) and "head_size=16" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_a_transformers_llama_with_any_mlp_width_and_its_own_head_dim_imports_with_its_logits(tmp_path):
    folder, theirs = hf_folder(tmp_path, "llama", intermediate_size=100, head_dim=8)
    import_hf(hf=folder, out=tmp_path / "ours")
    ours = load_artifact(tmp_path / "ours")
    assert (ours.config.mlp_hidden, ours.config.head_dim) == (100, 8)
    idx = torch.randint(ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (logits_of(ours.model, idx) - theirs(input_ids=idx).logits).abs().max().item() < 1e-4


def test_a_torchao_quantized_folder_is_refused_in_one_line_naming_its_parent(tmp_path):
    from lightning_llm.compress import quantize
    from lightning_llm.compress.quantize import manifest_entry

    source = load_artifact(our_folder(tmp_path, OURS["GPT2LMHeadModel"]))
    model = quantize(source.model, "int8_weight_only")
    folder = save_artifact(model, source.tokenizer_json, tmp_path / "int8", manifest=new_manifest(
        produced_by="compress", tokenizer_json=source.tokenizer_json, parent=str(source.path),
        quantization=manifest_entry("int8_weight_only", model)))
    with pytest.raises(UserError) as err:
        export_hf(ckpt=folder, out=tmp_path / "hf")
    assert f"its parent, {source.path}" in str(err.value) and "torchao" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()
