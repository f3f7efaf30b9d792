"""Export to and import from Hugging Face transformers: stock classes load our models with the
same logits and greedy tokens, the tokenizer gives the same ids, round trips are exact, and what
no stock class expresses is refused in one line. Every model here is tiny and made locally."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is made here

import pytest
import torch
from conftest import compose_config, llm
from omegaconf import OmegaConf
from tokenizers import Tokenizer, processors

from lightning_llm.config import to_dataclass
from lightning_llm.data.tokenizer import EOT, TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError
from lightning_llm.export import export_hf, import_hf
from lightning_llm.export import hf as export_hf_module
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.stages.export import ExportConfig

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is the optional [hf] extra")

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 3
PROMPT = "To be, or"

# Our three architectures, each with a variation a wrong mapping would trip over.
OURS = {
    "GPT2LMHeadModel": dict(position="learned", norm="layernorm", mlp="gelu"),
    "GPTNeoXForCausalLM": dict(position="rope", norm="layernorm", mlp="gelu", bias=False, rope_theta=500.0),
    "LlamaForCausalLM": dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False,
                             tie_embeddings=False),
}


def tokenizer_json(kind: str = "char") -> str:
    return train_tokenizer(TokenizerConfig(kind=kind, vocab_size=0 if kind == "char" else 300), [TEXT]).to_str()


def jitter(model: torch.nn.Module) -> torch.nn.Module:
    """Move every tensor off its init (norm weights 1, biases 0), so that a tensor mapped to the
    wrong place, or not at all, changes the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def our_folder(tmp_path, options: dict, kind: str = "char", name: str = "ours"):
    tok = tokenizer_json(kind)
    vocab = Tokenizer.from_str(tok).get_vocab_size()
    model = jitter(GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=4, n_embd=64, **options)))
    return save_artifact(model, tok, tmp_path / name, manifest=new_manifest(produced_by="test", tokenizer_json=tok))


def logits_of(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(model.features(idx))


def greedy(hf_model, ids: list[int], n: int) -> list[int]:
    out = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0].tolist()


# --- export ---------------------------------------------------------------------------------------

@needs_transformers
@pytest.mark.parametrize("hf_class", OURS)
def test_stock_transformers_loads_the_export_with_our_logits_and_greedy_tokens(tmp_path, hf_class):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = load_artifact(our_folder(tmp_path, OURS[hf_class]))
    export_hf(ckpt=ours.path, out=tmp_path / "hf")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md"):
        assert (tmp_path / "hf" / name).is_file(), name
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [hf_class] and "auto_map" not in config  # no custom code

    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(theirs).__name__ == hf_class
    idx = torch.randint(ours.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        difference = (logits_of(ours.model, idx) - theirs(input_ids=idx).logits).abs().max().item()
    assert difference < 1e-4

    # `llm generate temperature=0` is model.generate(temperature=0); transformers' greedy search, same tokens.
    ids = AutoTokenizer.from_pretrained(tmp_path / "hf")(PROMPT)["input_ids"]
    assert ids == ours.tokenizer.encode(PROMPT).ids
    expected = ours.model.generate(torch.tensor([ids]), 16, temperature=0)[0].tolist()
    assert greedy(theirs, ids, 16) == expected


@needs_transformers
@pytest.mark.parametrize("hf_class", OURS)
def test_round_trip_ours_to_hf_to_ours_is_exact(tmp_path, hf_class):
    ours = load_artifact(our_folder(tmp_path, OURS[hf_class]))
    export_hf(ckpt=ours.path, out=tmp_path / "hf")
    manifest = import_hf(hf=tmp_path / "hf", out=tmp_path / "back")
    back = load_artifact(tmp_path / "back")
    assert back.config == ours.config
    state = back.model.state_dict()
    assert state.keys() == ours.model.state_dict().keys()
    assert all(torch.equal(tensor, state[key]) for key, tensor in ours.model.state_dict().items())
    assert back.tokenizer.to_str() == ours.tokenizer.to_str()
    assert manifest["tokenizer_sha256"] == ours.manifest["tokenizer_sha256"]
    assert manifest["produced_by"] == "import" and manifest["hf"]["architecture"] == hf_class
    assert manifest["hf"]["exported_from"] == str(ours.path.resolve())


@needs_transformers
@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_autotokenizer_gives_our_ids_special_tokens_and_chat_template(tmp_path, kind):
    from transformers import AutoTokenizer

    ours = load_artifact(our_folder(tmp_path, OURS["GPT2LMHeadModel"], kind=kind))
    export_hf(ckpt=ours.path, out=tmp_path / "hf")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in (TEXT, "Whether 'tis nobler", f"{EOT}Or to take arms"):
        assert theirs(text)["input_ids"] == ours.tokenizer.encode(text).ids
        assert theirs.decode(theirs(text)["input_ids"]) == ours.tokenizer.decode(ours.tokenizer.encode(text).ids,
                                                                                 skip_special_tokens=False)
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token) == (EOT, EOT, "<|pad|>")
    assert theirs.unk_token == ("<|unk|>" if kind != "bpe" else None)
    chat = theirs.apply_chat_template([{"role": "user", "content": "Hark"}], tokenize=False, add_generation_prompt=True)
    assert chat == "USER:\nHark\n\nASSISTANT:\n"  # conf/template/plain.yaml, as the server renders it
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    vocab = ours.tokenizer.get_vocab()
    assert generation["eos_token_id"] == [vocab[EOT], vocab["<|eos|>"]]


@needs_transformers
@pytest.mark.parametrize(("options", "named"), [
    (dict(position="none"), "position=none norm=layernorm mlp=gelu"),
    (dict(position="rope", norm="rmsnorm", mlp="gelu"), "position=rope norm=rmsnorm mlp=gelu"),
    (dict(position="learned", mlp="swiglu"), "position=learned norm=layernorm mlp=swiglu"),
    (dict(position="rope", n_kv_head=2), "n_kv_head=2 < n_head=4"),
])
def test_options_no_stock_class_expresses_are_refused_in_one_line(tmp_path, options, named):
    source = our_folder(tmp_path, options)
    with pytest.raises(UserError) as err:
        export_hf(ckpt=source, out=tmp_path / "hf")
    assert named in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_without_transformers_the_command_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(UserError, match=r"^llm export format=hf needs transformers: pip install 'lightning-llm\[hf\]'"):
        export_hf(ckpt=tmp_path, out=tmp_path / "hf")
    with pytest.raises(UserError, match=r"^llm import needs transformers: pip install 'lightning-llm\[hf\]'$"):
        import_hf(hf=tmp_path, out=tmp_path / "ours")


@needs_transformers
def test_a_wrong_weight_mapping_fails_the_check_and_writes_nothing(tmp_path, monkeypatch):
    """The logit check is what stands between a mapping bug and a silently wrong export."""
    neox = export_hf_module.ARCHITECTURES["gpt_neox"]

    def unregrouped(config):  # q, k, v left in our order: NeoX would read them per head
        return [(ours, theirs, export_hf_module.SAME if layout is export_hf_module.QKV_PER_HEAD else layout)
                for ours, theirs, layout in export_hf_module.neox_weights(config)]

    monkeypatch.setitem(export_hf_module.ARCHITECTURES, "gpt_neox", dataclasses.replace(neox, weights=unregrouped))
    source = our_folder(tmp_path, OURS["GPTNeoXForCausalLM"])
    with pytest.raises(RuntimeError, match="logits differ"):
        export_hf(ckpt=source, out=tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]  # no folder, no staging left behind


@needs_transformers
def test_out_is_never_a_folder_that_would_lose_something(tmp_path):
    source = our_folder(tmp_path, OURS["GPT2LMHeadModel"])
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier export.*overwrite=true"):
        export_hf(ckpt=source, out=other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="holds what is being read"):
        export_hf(ckpt=source, out=tmp_path, overwrite=True)

    export_hf(ckpt=source, out=tmp_path / "hf")
    export_hf(ckpt=source, out=tmp_path / "hf")  # an earlier export is replaced without asking
    export_hf(ckpt=source, out=other, overwrite=True)
    assert not (other / "keep.txt").exists() and (other / "model.safetensors").is_file()

    with pytest.raises(UserError, match="not an earlier import"):
        import_hf(hf=tmp_path / "hf", out=source)
    import_hf(hf=tmp_path / "hf", out=tmp_path / "back")
    import_hf(hf=tmp_path / "hf", out=tmp_path / "back")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@needs_transformers
def test_the_model_card_reports_data_budget_metrics_with_splits_and_limits(tmp_path):
    from huggingface_hub import ModelCard

    data_dir = tmp_path / "data" / "shakespeare-0123"
    data_dir.mkdir(parents=True)
    (data_dir / "report.md").write_text("# Data card: shakespeare\n\nGutenberg and Folio editions.\n")
    run_dir = tmp_path / "run"
    source = our_folder(run_dir, OURS["GPTNeoXForCausalLM"], name="model")
    splits = {s: {"tokens": t, "documents": d, "bytes_per_token": 1.0}
              for s, t, d in (("train", 7696542, 58), ("val", 894113, 9), ("test", 948363, 10))}
    run = {"experiment": "shakespeare_char", "run_dir": str(run_dir), "git_commit": "abc123", "seed": 1337,
           "data": {"dir": str(data_dir), "hash": data_dir.name, "name": "shakespeare", "vocab_size": 31,
                    "tokenizer": "char", "splits": splits},
           "precision": "bf16-mixed", "steps": 600, "train_seconds": 301.5, "tokens_seen": 1228800,
           "metrics": {"train/loss": 1.41, "val/loss": 1.52, "best_val/loss": 1.50},
           "overrides": {"batch_size": 32, "optim": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.003}}},
           "eval": {"at": "2026-01-01 00:00:00", "metrics": {"val/ppl": 4.61, "test/ppl": 4.83, "test/bpb": 2.27,
                                                              "ngram/test/ppl": 6.02, "gen/bleu": 0.05}}}
    (run_dir / "run.json").write_text(json.dumps(run))
    export_hf(ckpt=source, out=tmp_path / "hf")  # the run's model/ folder: run.json is beside it

    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {(r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results} == \
        {("val", "ppl", 4.61), ("test", "ppl", 4.83), ("test", "bpb", 2.27)}
    text = card.text
    for expected in ("GPTNeoXForCausalLM", "| train | 58 | 7,696,542 |", "| steps | 600 |",
                     "| tokens seen | 1,228,800 |", "| ppl | test | 4.83 |", "| ngram ppl | test | 6.02 |",
                     "| gen bleu | test | 0.05 |", "| best loss | val | 1.5 |", "| seed | 1337 |",
                     "[data_card.md](data_card.md)", "## Intended use and limitations", "AdamW lr=0.003"):
        assert expected in text, expected
    assert (tmp_path / "hf" / "data_card.md").read_text().startswith("# Data card: shakespeare")


# --- import of models made with transformers ---------------------------------------------------

def hf_folder(tmp_path, model_type: str, **overrides):
    """A small random transformers model of `model_type`, saved with a tokenizer as a user would."""
    import transformers

    tok = Tokenizer.from_str(tokenizer_json("bpe"))
    vocab = tok.get_vocab_size()
    if model_type == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                         activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
    elif model_type == "gpt_neox":
        config = transformers.GPTNeoXConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=192,
                                            hidden_act="gelu_pytorch_tanh", max_position_embeddings=32,
                                            use_parallel_residual=False, rotary_pct=1.0, rotary_emb_base=500.0,
                                            bos_token_id=0, eos_token_id=0)
    else:  # a Llama tokenizer starts every text with its BOS token
        bos = tok.token_to_id("<|bos|>")
        tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=32, attention_bias=True, mlp_bias=False,
                                          rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                          tie_word_embeddings=False, bos_token_id=bos, eos_token_id=0)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = jitter(transformers.AutoModelForCausalLM.from_config(config))
    folder = tmp_path / f"hf-{model_type}"
    model.save_pretrained(folder)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token=EOT)
    hf_tokenizer.save_pretrained(folder)
    return folder, model


@needs_transformers
@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "llama"])
def test_a_model_made_with_transformers_imports_with_its_logits_tokens_and_tokenizer(tmp_path, model_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, theirs = hf_folder(tmp_path, model_type)
    manifest = import_hf(hf=folder, out=tmp_path / "ours")
    ours = load_artifact(tmp_path / "ours")
    assert manifest["hf"]["model_type"] == model_type and ours.manifest["produced_by"] == "import"

    idx = torch.randint(ours.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (logits_of(ours.model, idx) - theirs(input_ids=idx).logits).abs().max().item() < 1e-4
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"]
    assert ours.tokenizer.encode(PROMPT).ids == ids
    assert (ids[0] == ours.tokenizer.token_to_id("<|bos|>")) == (model_type == "llama")
    assert ours.model.generate(torch.tensor([ids]), 16, temperature=0)[0].tolist() == greedy(theirs, ids, 16)

    # ... and back out: a stock model again, with the same logits (biases it lacked are zero).
    export_hf(ckpt=tmp_path / "ours", out=tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32).eval()
    assert type(again) is type(theirs)
    with torch.no_grad():
        assert (again(input_ids=idx).logits - theirs(input_ids=idx).logits).abs().max().item() < 1e-4


@needs_transformers
@pytest.mark.parametrize(("model_type", "overrides", "named"), [
    ("gpt_neox", dict(use_parallel_residual=True), "use_parallel_residual=True"),
    ("gpt_neox", dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ("gpt_neox", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}),
     "partial_rotary_factor"),
    ("llama", dict(rms_norm_eps=1e-5), "rms_norm_eps=1e-05"),
])
def test_a_transformers_model_we_cannot_express_is_refused_in_one_line(tmp_path, model_type, overrides, named):
    folder, _ = hf_folder(tmp_path, model_type, **overrides)
    with pytest.raises(UserError) as err:
        import_hf(hf=folder, out=tmp_path / "ours")
    assert named in str(err.value) and f"hf={folder}" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ours").exists()


@needs_transformers
def test_an_architecture_outside_the_three_is_named(tmp_path):
    import transformers

    folder = tmp_path / "mistral"
    transformers.MistralConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=128).save_pretrained(folder)
    with pytest.raises(UserError, match="is a 'mistral' model: import reads gpt2 .*llama"):
        import_hf(hf=folder, out=tmp_path / "ours")


# --- the commands ---------------------------------------------------------------------------------

@needs_transformers
def test_llm_import_command_reaches_its_stage_and_prints_the_check(tmp_path):
    """`import` is a Python keyword: the stage lives in stages/hf_import.py, and the CLI finds it."""
    source = our_folder(tmp_path, OURS["LlamaForCausalLM"])
    export_hf(ckpt=source, out=tmp_path / "hf")
    result = llm(["import", f"hf={tmp_path / 'hf'}", f"out={tmp_path / 'back'}"], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert "imported LlamaForCausalLM" in result.stdout and "logits match" in result.stdout
    assert load_artifact(tmp_path / "back").config == load_artifact(source).config


def test_an_unknown_export_format_is_refused_before_any_work():
    with pytest.raises(UserError, match="^export: format must be one of hf, got 'onnx'$"):
        cfg = compose_config("export", ["ckpt=x", "out=y", "format=onnx"])
        to_dataclass(ExportConfig, OmegaConf.masked_copy(cfg, ["ckpt", "format", "out", "overwrite"]), "export")
