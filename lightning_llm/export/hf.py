"""Our GPT as a stock Hugging Face transformers model, and back, with no custom code.

The GPTConfig options choose the class (ARCHITECTURES): learned positions + LayerNorm + GELU is
GPT2LMHeadModel; RoPE + LayerNorm + GELU is GPTNeoXForCausalLM with full rotary and a sequential
residual; RoPE + RMSNorm + SwiGLU (with grouped-query attention) is LlamaForCausalLM. Each class
has a table of how our tensors map onto its tensors: the same tensor, its transpose (GPT-2's Conv1D
keeps (in, out)), q/k/v regrouped per head (NeoX's fused query_key_value), or one of our fused
matrices cut in pieces (Llama's q/k/v and gate/up projections). The table runs both ways, so export
and import share it; a bias one side lacks is zero on the side that has it, which is exact.
A pruned MLP (mlp_hidden_size) is any class's intermediate size; pruned heads (head_size, so that
n_head * head_size < n_embd) only Llama expresses, with its own head_dim.

Export writes with transformers' own save_pretrained: config.json, model.safetensors,
generation_config.json, tokenizer.json + tokenizer_config.json (special tokens, chat template);
then the model card README.md and lightning_llm.json (our config and where the export came from,
which `llm import` reads to give back the exact config). Both directions load what they wrote
(or read) with the other side and compare logits on random tokens before anything is kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lightning_llm.artifacts import staged_folder
from lightning_llm.data.tokenizer import EOT, UNK, TokenizerConfig
from lightning_llm.errors import UserError
from lightning_llm.export.card import copy_data_card, model_card
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import (
    DEFAULT_TEMPLATE,
    MANIFEST,
    TORCHAO_WEIGHTS,
    WEIGHTS,
    first_line,
    load_artifact,
    new_manifest,
    package_version,
    read_manifest,
    run_dir_of,
    save_artifact,
)
from lightning_llm.templates import model_template

log = logging.getLogger("lightning_llm")

RECORD = "lightning_llm.json"  # beside the transformers files: our config and the export's origin
RECORD_FORMAT = "lightning-llm/hf-export"
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")  # both are GELU's tanh approximation, which our MLP uses
CHECK_TOKENS = 64  # per row, two rows of random ids: the logit check
TOLERANCE = 1e-4  # max |logit difference| allowed, times max(1, max |logit|): fp32 sums in another order


def require_transformers(command: str):
    """transformers is an optional extra: one line saying what to install when it is missing."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{command} needs transformers: pip install 'lightning-llm[hf]'") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise UserError(f"{command} needs transformers 5 or newer, found {transformers.__version__}: "
                        "pip install -U 'lightning-llm[hf]'")
    return transformers


# --- how a tensor of ours becomes tensors of theirs ---------------------------------------------

@dataclass(frozen=True)
class Layout:
    to_hf: Callable[[torch.Tensor, GPTConfig], list[torch.Tensor]]
    from_hf: Callable[[list[torch.Tensor], GPTConfig], torch.Tensor]


def _per_head(t: torch.Tensor, c: GPTConfig) -> list[torch.Tensor]:
    """[all q | all k | all v] rows -> [q k v of head 0 | q k v of head 1 | ...] (NeoX)."""
    return [t.reshape(3, c.n_head, c.head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)]


def _per_part(ts: list[torch.Tensor], c: GPTConfig) -> torch.Tensor:
    t = ts[0]
    return t.reshape(c.n_head, 3, c.head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _qkv_split(t: torch.Tensor, c: GPTConfig) -> list[torch.Tensor]:
    kv = c.n_kv_head * c.head_dim
    return list(t.split([c.n_head * c.head_dim, kv, kv]))  # the query is n_embd wide unless heads were pruned


SAME = Layout(lambda t, c: [t], lambda ts, c: ts[0])
TRANSPOSED = Layout(lambda t, c: [t.t()], lambda ts, c: ts[0].t())  # GPT-2's Conv1D: weight is (in, out)
QKV_PER_HEAD = Layout(_per_head, _per_part)
QKV_SPLIT = Layout(_qkv_split, lambda ts, c: torch.cat(ts))  # q_proj, k_proj, v_proj
GATE_UP = Layout(lambda t, c: list(t.chunk(2)), lambda ts, c: torch.cat(ts))  # gate first, as MLP reads it

Row = tuple[str, list[str], Layout]  # our name, their names, the layout between them


def linear(ours: str, theirs: str | list[str], weight: Layout = SAME, bias: Layout = SAME) -> list[Row]:
    """The weight and the bias of one layer (a norm's bias or a linear's)."""
    theirs = [theirs] if isinstance(theirs, str) else theirs
    return [(f"{ours}.weight", [f"{t}.weight" for t in theirs], weight),
            (f"{ours}.bias", [f"{t}.bias" for t in theirs], bias)]


def gpt2_weights(c: GPTConfig) -> list[Row]:
    rows = [("tok_emb.weight", ["transformer.wte.weight"], SAME), ("pos_emb.weight", ["transformer.wpe.weight"], SAME)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
        rows += (linear(f"{ours}.norm1", f"{theirs}.ln_1")
                 + linear(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn", TRANSPOSED)
                 + linear(f"{ours}.attn.proj", f"{theirs}.attn.c_proj", TRANSPOSED)
                 + linear(f"{ours}.norm2", f"{theirs}.ln_2")
                 + linear(f"{ours}.mlp.up", f"{theirs}.mlp.c_fc", TRANSPOSED)
                 + linear(f"{ours}.mlp.down", f"{theirs}.mlp.c_proj", TRANSPOSED))
    return rows + linear("norm_f", "transformer.ln_f") + [("lm_head.weight", ["lm_head.weight"], SAME)]


def neox_weights(c: GPTConfig) -> list[Row]:
    rows = [("tok_emb.weight", ["gpt_neox.embed_in.weight"], SAME)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}", f"gpt_neox.layers.{i}"
        rows += (linear(f"{ours}.norm1", f"{theirs}.input_layernorm")
                 + linear(f"{ours}.attn.qkv", f"{theirs}.attention.query_key_value", QKV_PER_HEAD, QKV_PER_HEAD)
                 + linear(f"{ours}.attn.proj", f"{theirs}.attention.dense")
                 + linear(f"{ours}.norm2", f"{theirs}.post_attention_layernorm")
                 + linear(f"{ours}.mlp.up", f"{theirs}.mlp.dense_h_to_4h")
                 + linear(f"{ours}.mlp.down", f"{theirs}.mlp.dense_4h_to_h"))
    return rows + linear("norm_f", "gpt_neox.final_layer_norm") + [("lm_head.weight", ["lm_head.weight"], SAME)]


def llama_weights(c: GPTConfig) -> list[Row]:
    rows = [("tok_emb.weight", ["model.embed_tokens.weight"], SAME)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        qkv = [f"{theirs}.self_attn.{p}_proj" for p in "qkv"]
        rows += (linear(f"{ours}.norm1", f"{theirs}.input_layernorm")
                 + linear(f"{ours}.attn.qkv", qkv, QKV_SPLIT, QKV_SPLIT)
                 + linear(f"{ours}.attn.proj", f"{theirs}.self_attn.o_proj")
                 + linear(f"{ours}.norm2", f"{theirs}.post_attention_layernorm")
                 + linear(f"{ours}.mlp.up", [f"{theirs}.mlp.gate_proj", f"{theirs}.mlp.up_proj"], GATE_UP, GATE_UP)
                 + linear(f"{ours}.mlp.down", f"{theirs}.mlp.down_proj"))
    return rows + linear("norm_f", "model.norm") + [("lm_head.weight", ["lm_head.weight"], SAME)]


def convert(source: dict[str, torch.Tensor], rows: list[Row], config: GPTConfig, target: dict[str, torch.Tensor],
            *, to_hf: bool) -> dict[str, torch.Tensor]:
    """`source` in the names and layouts of `target`. A bias the source lacks is zero; a zero
    bias the target lacks is dropped; any other tensor that does not map is a bug in the table."""
    out, used = {}, set()
    for ours, theirs, layout in rows:
        if to_hf and ours in source:
            out.update(zip(theirs, layout.to_hf(source[ours], config)))
            used.add(ours)
        elif not to_hf and all(name in source for name in theirs):
            out[ours] = layout.from_hf([source[name] for name in theirs], config)
            used.update(theirs)
    if set(source) - used:
        raise RuntimeError(f"no mapping for {sorted(set(source) - used)[:5]}")
    for key, tensor in target.items():
        if key not in out:
            if not key.endswith(".bias"):
                raise RuntimeError(f"nothing maps onto {key}")
            out[key] = torch.zeros_like(tensor)
    for key in set(out) - set(target):
        if not key.endswith(".bias") or out[key].any():
            raise RuntimeError(f"{key} has no place in the target model")
        del out[key]
    return {key: value.contiguous() for key, value in out.items()}


# --- configs both ways ---------------------------------------------------------------------------

def gpt2_config(transformers, model: GPT, ids: dict):
    c = model.config
    return transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.mlp_hidden, activation_function="gelu_pytorch_tanh", layer_norm_epsilon=model.norm_f.eps,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, tie_word_embeddings=c.tie_embeddings, **ids)


def neox_config(transformers, model: GPT, ids: dict):
    c = model.config
    config = transformers.GPTNeoXConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        intermediate_size=c.mlp_hidden, hidden_act="gelu_pytorch_tanh", max_position_embeddings=c.block_size,
        layer_norm_eps=model.norm_f.eps, use_parallel_residual=False, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": 1.0},
        attention_dropout=c.dropout, hidden_dropout=c.dropout, tie_word_embeddings=c.tie_embeddings, **ids)
    # transformers 4.x reads the rotary settings from these keys; without them it would rotate a quarter of each head.
    config.rotary_pct, config.rotary_emb_base = 1.0, c.rope_theta
    return config


def llama_config(transformers, model: GPT, ids: dict):
    c = model.config
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=model.norm_f.eps, attention_bias=c.bias, mlp_bias=c.bias,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attention_dropout=c.dropout,
        tie_word_embeddings=c.tie_embeddings, **ids)
    config.rope_theta = c.rope_theta  # what transformers 4.x reads
    return config


def need(where: str, hf, key: str, allowed: tuple) -> None:
    value = getattr(hf, key, None)
    if value not in allowed:
        raise UserError(f"{where}: {hf.model_type} with {key}={value!r} has no lightning-llm equivalent "
                        f"(import reads {key} in {list(allowed)})")


def rope(where: str, hf, partial: bool) -> float:
    """rope_theta of a model with plain full-width RoPE; scaled or partial rotary is refused."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise UserError(f"{where}: {hf.model_type} with rope_type={params['rope_type']!r} (scaled RoPE) has no "
                        "lightning-llm equivalent (import reads rope_type 'default')")
    if partial and params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError(f"{where}: {hf.model_type} with partial_rotary_factor (rotary_pct)="
                        f"{params['partial_rotary_factor']} has no lightning-llm equivalent (RoPE here rotates "
                        "whole heads: import reads 1.0)")
    return float(params.get("rope_theta", 10000.0))


def gpt2_read(where: str, hf) -> dict:
    need(where, hf, "activation_function", TANH_GELU)
    need(where, hf, "scale_attn_weights", (True,))
    need(where, hf, "scale_attn_by_inverse_layer_idx", (False,))
    need(where, hf, "add_cross_attention", (False,))
    return dict(vocab_size=hf.vocab_size, block_size=hf.n_positions, n_layer=hf.n_layer, n_head=hf.n_head,
                n_embd=hf.n_embd, dropout=float(hf.resid_pdrop), bias=True, tie_embeddings=hf.tie_word_embeddings,
                hidden=hf.n_inner or 4 * hf.n_embd, eps=hf.layer_norm_epsilon)


def neox_read(where: str, hf) -> dict:
    need(where, hf, "hidden_act", TANH_GELU)
    need(where, hf, "use_parallel_residual", (False,))
    return dict(vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, n_layer=hf.num_hidden_layers,
                n_head=hf.num_attention_heads, n_embd=hf.hidden_size, dropout=float(hf.hidden_dropout), bias=True,
                rope_theta=rope(where, hf, partial=True), tie_embeddings=hf.tie_word_embeddings,
                hidden=hf.intermediate_size, eps=hf.layer_norm_eps)


def llama_read(where: str, hf) -> dict:
    need(where, hf, "hidden_act", ("silu",))
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    return dict(vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, n_layer=hf.num_hidden_layers,
                n_head=hf.num_attention_heads, n_kv_head=hf.num_key_value_heads, n_embd=hf.hidden_size,
                head_size=None if head_dim * hf.num_attention_heads == hf.hidden_size else head_dim,
                dropout=float(hf.attention_dropout or 0.0), bias=bool(hf.attention_bias or hf.mlp_bias),
                rope_theta=rope(where, hf, partial=True), tie_embeddings=hf.tie_word_embeddings,
                hidden=hf.intermediate_size, eps=hf.rms_norm_eps)


@dataclass(frozen=True)
class Architecture:
    hf_class: str  # the stock transformers class that loads it
    options: dict  # the GPTConfig options it expresses
    grouped_query: bool  # whether it has n_kv_head < n_head
    head_dim: bool  # whether its head size is its own (head_dim), not hidden size / heads
    weights: Callable[[GPTConfig], list[Row]]
    config: Callable  # (transformers, our model, token ids) -> its config
    read: Callable  # (where, its config) -> GPTConfig fields, plus `hidden` (MLP width) and `eps` (norm epsilon)


ARCHITECTURES = {  # by transformers' model_type
    "gpt2": Architecture("GPT2LMHeadModel", dict(position="learned", norm="layernorm", mlp="gelu"), False,
                         False, gpt2_weights, gpt2_config, gpt2_read),
    "gpt_neox": Architecture("GPTNeoXForCausalLM", dict(position="rope", norm="layernorm", mlp="gelu"), False,
                             False, neox_weights, neox_config, neox_read),
    "llama": Architecture("LlamaForCausalLM", dict(position="rope", norm="rmsnorm", mlp="swiglu"), True,
                          True, llama_weights, llama_config, llama_read),
}


def describe(options: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def architecture_for(config: GPTConfig) -> Architecture:
    """The stock class that computes exactly what this config computes; one UserError if none does."""
    chosen = dict(position=config.position, norm=config.norm, mlp=config.mlp)
    arch = next((a for a in ARCHITECTURES.values() if a.options == chosen), None)
    if arch is None:
        supported = "; ".join(f"{describe(a.options)} ({a.hf_class})" for a in ARCHITECTURES.values())
        raise UserError(f"no stock transformers class has {describe(chosen)}: export supports {supported}")
    if config.n_kv_head != config.n_head and not arch.grouped_query:
        raise UserError(f"{arch.hf_class} has no grouped-query attention (n_kv_head={config.n_kv_head} < "
                        f"n_head={config.n_head}): only LlamaForCausalLM ({describe(ARCHITECTURES['llama'].options)}) "
                        "has it")
    if config.n_head * config.head_dim != config.n_embd:  # heads pruned by llm compress: fewer, each as wide
        heads = f"n_head={config.n_head} heads of head_size={config.head_dim} ({config.n_head * config.head_dim} wide, " \
                f"not n_embd={config.n_embd}; pruned heads)"
        if not arch.head_dim:
            raise UserError(f"{arch.hf_class} cannot express {heads}: its head size is always hidden size / heads; "
                            f"only LlamaForCausalLM ({describe(ARCHITECTURES['llama'].options)}) has its own head_dim")
        if config.n_embd % config.n_head:
            raise UserError(f"{arch.hf_class} cannot express {heads}: transformers' config requires hidden_size "
                            f"({config.n_embd}) divisible by num_attention_heads ({config.n_head}), even with its own "
                            "head_dim; prune to a number of heads that divides n_embd")
    return arch


# --- tokenizer ------------------------------------------------------------------------------------

def special_tokens(vocab: dict[str, int], manifest: dict, run_record: dict | None) -> dict[str, str]:
    """bos/eos/pad/unk for transformers. An imported model keeps its own. Ours follow GPT-2: every
    training document ends with <|endoftext|>, so it both starts and ends text (the reserved
    <|bos|>/<|eos|> were never trained on); the reserved pad token pads."""
    imported = (manifest.get("hf") or {}).get("special_tokens")
    if imported:
        return {f"{role}_token": token for role, token in imported.items() if token in vocab}
    names = (((run_record or {}).get("overrides") or {}).get("tokenizer") or {})
    pad = names.get("pad", TokenizerConfig.pad)
    roles = {"bos_token": EOT, "eos_token": EOT, "pad_token": pad if pad in vocab else EOT}
    if UNK in vocab:  # char and unigram tokenizers
        roles["unk_token"] = UNK
    return {role: token for role, token in roles.items() if token in vocab}


def stop_ids(vocab: dict[str, int], roles: dict[str, str], manifest: dict, run_record: dict | None) -> list[int]:
    """Where generation stops: the end of text, and the reserved end-of-turn token a chat fine-tune ends on."""
    imported = (manifest.get("hf") or {}).get("eos_token_ids")
    if imported:
        return list(imported)
    names = (((run_record or {}).get("overrides") or {}).get("tokenizer") or {})
    candidates = [roles.get("eos_token"), names.get("eos", TokenizerConfig.eos)]
    return list(dict.fromkeys(vocab[t] for t in candidates if t in vocab))


def hf_tokenizer(transformers, tokenizer: Tokenizer, *, manifest: dict, run_record: dict | None, block_size: int):
    vocab = tokenizer.get_vocab()
    roles = special_tokens(vocab, manifest, run_record)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_str()), model_max_length=block_size,
        chat_template=model_template(manifest).source, **roles)  # the one the server and `llm generate` use
    return fast, roles, stop_ids(vocab, roles, manifest, run_record)


def save_tokenizer(fast, folder: Path) -> None:
    """transformers' own files, the chat template inside tokenizer_config.json. transformers 5 names
    its tokenizer class TokenizersBackend, which 4.x cannot load; PreTrainedTokenizerFast is the
    same class under the name both read."""
    fast.save_pretrained(folder, save_jinja_files=False)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


NOOP_POST_PROCESSOR = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {}}


def read_tokenizer_json(tokenizer) -> str:
    """The tokenizer as transformers runs it. transformers 5 gives a tokenizer that had no
    post-processor one that adds nothing (the NOOP above); dropping it again gives back the very
    file we exported, so the tokenizer keeps its hash."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec.get("post_processor") == NOOP_POST_PROCESSOR:
        spec["post_processor"] = None
    return Tokenizer.from_str(json.dumps(spec)).to_str()


# --- checking and writing -------------------------------------------------------------------------

@torch.inference_mode()
def compare_logits(model: GPT, hf_model, *, seed: int = 0) -> dict:
    """Both models on the same random tokens: the largest logit difference, against TOLERANCE."""
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(c.vocab_size, (2, min(c.block_size, CHECK_TOKENS)), generator=generator)
    model.eval(), hf_model.eval()
    device = next(model.parameters()).device
    ours = model.lm_head(model.features(idx.to(device))).float().cpu()
    theirs = hf_model(input_ids=idx.to(hf_model.device)).logits.float().cpu()
    scale = ours.abs().max().item()
    result = {"max_abs_logit_diff": (ours - theirs).abs().max().item(), "max_abs_logit": scale,
              "tolerance": TOLERANCE * max(1.0, scale), "tokens": idx.numel(),
              "same_argmax": bool((ours.argmax(-1) == theirs.argmax(-1)).all())}
    if result["max_abs_logit_diff"] > result["tolerance"]:
        raise RuntimeError(f"the transformers model's logits differ from ours by {result['max_abs_logit_diff']:.3g} "
                           f"(tolerance {result['tolerance']:.3g}): nothing was written")
    return result


def check_out(out: Path, *, overwrite: bool, earlier: Callable[[Path], bool], what: str, source: Path) -> None:
    """Refuse a destination that would lose something: the source itself (or a folder holding it),
    a file, or a non-empty folder that is not an earlier `what` unless overwrite=true."""
    out, source = out.resolve(), source.resolve()
    if out == source or out in source.parents:
        raise UserError(f"out={out} holds what is being read ({source}): name another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not earlier(out):
        raise UserError(f"out={out} is a non-empty folder that is not an earlier {what}: name a new folder, "
                        "or pass overwrite=true to replace it")


def is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / RECORD).read_text()).get("format") == RECORD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_import(folder: Path) -> bool:
    try:
        return (folder / "manifest.json").exists() and read_manifest(folder).get("produced_by") == "import"
    except (UserError, OSError, ValueError):
        return False


def read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


# --- export ---------------------------------------------------------------------------------------

@contextmanager
def quiet(transformers) -> Iterator[None]:
    """No progress bars from transformers while it writes and reads a few local files."""
    hf_logging = transformers.utils.logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def export_hf(*, ckpt: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the model at `ckpt` (run dir, .ckpt or model folder) to `out` as a stock transformers
    model with its tokenizer, generation config and model card; returns the lightning_llm.json record."""
    transformers = require_transformers("llm export format=hf")
    with quiet(transformers):
        return _export_hf(transformers, ckpt=ckpt, out=Path(out), overwrite=overwrite)


def _export_hf(transformers, *, ckpt: str | Path, out: Path, overwrite: bool) -> dict:
    artifact = load_artifact(ckpt)
    quantized = artifact.manifest.get("quantization") or {}
    if quantized.get("weights") == TORCHAO_WEIGHTS:
        parent = artifact.manifest.get("parent")
        raise UserError(f"ckpt={artifact.path} is quantized with torchao ({quantized.get('scheme')}), whose weights a "
                        "stock transformers class does not take: export "
                        + (f"its parent, {parent}" if parent else "the model before quantization"))
    model, config = artifact.model.float(), artifact.config  # a bf16/fp16 cast exports in float32
    arch = architecture_for(config)
    check_out(out, overwrite=overwrite, earlier=is_export, what="export", source=artifact.path)
    run_dir = run_dir_of(artifact.path)
    run_record = read_json(run_dir / "run.json" if run_dir else None)

    fast, roles, stops = hf_tokenizer(transformers, artifact.tokenizer, manifest=artifact.manifest,
                                      run_record=run_record, block_size=config.block_size)
    vocab = artifact.tokenizer.get_vocab()
    ids = {f"{role}_id": vocab[roles[role]] if role in roles else None
           for role in ("bos_token", "eos_token", "pad_token")}
    hf_model = getattr(transformers, arch.hf_class)(arch.config(transformers, model, ids))
    hf_model.load_state_dict(convert(model.state_dict(), arch.weights(config), config, hf_model.state_dict(),
                                     to_hf=True), strict=True)
    hf_model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=stops, pad_token_id=ids["pad_token_id"])

    with staged_folder(out) as folder:
        hf_model.save_pretrained(folder)
        save_tokenizer(fast, folder)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        check = compare_logits(model, loaded)
        record = {"format": RECORD_FORMAT, "format_version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "lightning_llm": package_version(), "transformers": transformers.__version__,
                  "architecture": arch.hf_class, "model_type": hf_model.config.model_type,
                  "model_config": config.to_dict(), "mlp_hidden": config.mlp_hidden,
                  "source": str(artifact.path.resolve()), "run_dir": str(run_dir.resolve()) if run_dir else None,
                  "source_manifest": artifact.manifest, "special_tokens": roles, "eos_token_ids": stops, "check": check}
        data_card = copy_data_card(run_record, folder)
        (folder / "README.md").write_text(model_card(
            record=record, parameters=model.num_params(exclude_embeddings=False), run_record=run_record,
            data_card=data_card, default_template=model_template(artifact.manifest).name == DEFAULT_TEMPLATE))
        (folder / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("export: %s written to %s (max |logit difference| %.2g over %d random tokens)",
             arch.hf_class, out, check["max_abs_logit_diff"], check["tokens"])
    return record


# --- import ---------------------------------------------------------------------------------------

def gpt_config(where: str, arch: Architecture, fields: dict, record: dict | None,
               weights: dict[str, torch.Tensor]) -> GPTConfig:
    """The GPTConfig of what `fields` (from arch.read) describe. The MLP width becomes an
    mlp_ratio where one gives it, else an mlp_hidden_size (as a pruned MLP has); a folder we
    exported gives back its own mlp_ratio, mlp_hidden_size and dropout, and bias=false when every
    bias is still zero."""
    fields = {**fields, **arch.options}
    hidden = fields.pop("hidden")
    width = 3 * hidden // 2 if fields["mlp"] == "swiglu" else hidden  # mlp_hidden from int(mlp_ratio * n_embd)
    ours = (record or {}).get("model_config") or {}
    widths = [(width / fields["n_embd"], None), ((width + 0.5) / fields["n_embd"], None),
              (ours.get("mlp_ratio", GPTConfig.mlp_ratio), hidden)]  # the last always gives `hidden`
    if "mlp_ratio" in ours:
        widths.insert(0, (ours["mlp_ratio"], ours.get("mlp_hidden_size")))
    if "dropout" in ours:
        fields["dropout"] = ours["dropout"]
    if ours.get("bias") is False and not any(t.any() for k, t in weights.items() if k.endswith(".bias")):
        fields["bias"] = False
    try:
        configs = (GPTConfig(**fields, mlp_ratio=ratio, mlp_hidden_size=size) for ratio, size in widths)
        return next(config for config in configs if config.mlp_hidden == hidden)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


def import_hf(*, hf: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Read a local transformers folder (GPT-2, GPT-NeoX or Llama, safetensors weights) into a model
    folder of ours; returns its manifest."""
    transformers = require_transformers("llm import")
    with quiet(transformers):
        return _import_hf(transformers, folder=Path(hf), out=Path(out), overwrite=overwrite)


def _import_hf(transformers, *, folder: Path, out: Path, overwrite: bool) -> dict:
    where = f"hf={folder}"
    if not (folder / "config.json").is_file():
        raise UserError(f"{where} is not a transformers model folder (no config.json): pass the folder that "
                        "save_pretrained wrote")
    if (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file():
        raise UserError(f"{where} is a lightning-llm model folder already: pass it as ckpt= to the other stages")
    check_out(out, overwrite=overwrite, earlier=is_import, what="import", source=folder)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # an unknown model_type, a config that needs remote code, unreadable JSON
        raise UserError(f"{where}: config.json does not load ({type(err).__name__}: {first_line(err)})") from None
    arch = ARCHITECTURES.get(hf_config.model_type)
    if arch is None:
        raise UserError(f"{where} is a {hf_config.model_type!r} model: import reads "
                        + ", ".join(f"{t} ({a.hf_class})" for t, a in ARCHITECTURES.items()))
    fields = arch.read(where, hf_config)
    eps = fields.pop("eps")
    try:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, local_files_only=True).eval()
    except Exception as err:  # no safetensors weights (a pickle is never loaded), a broken file
        raise UserError(f"{where}: the weights do not load ({type(err).__name__}: {first_line(err)}); "
                        "import reads model.safetensors") from None
    theirs = hf_model.state_dict()
    record = read_json(folder / RECORD) if is_export(folder) else None
    config = gpt_config(where, arch, fields, record, theirs)
    model = GPT(config).eval()
    if abs(model.norm_f.eps - eps) > 1e-12:
        key = "rms_norm_eps" if config.norm == "rmsnorm" else "layer_norm_eps"
        raise UserError(f"{where}: {hf_config.model_type} with {key}={eps} has no lightning-llm equivalent "
                        f"(its {config.norm} uses eps={model.norm_f.eps})")
    model.load_state_dict(convert(theirs, arch.weights(config), config, model.state_dict(), to_hf=False), strict=True)

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:
        raise UserError(f"{where}: its tokenizer does not load ({type(err).__name__}: {first_line(err)})") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"{where}: its tokenizer is not a `tokenizers` one (no tokenizer.json): lightning-llm "
                        "reads tokenizer.json")
    tokenizer_json = read_tokenizer_json(tokenizer)
    check = compare_logits(model, hf_model)
    eos = hf_model.generation_config.eos_token_id
    hf_section = {
        "architecture": arch.hf_class, "model_type": hf_config.model_type, "source": str(folder.resolve()),
        "transformers": transformers.__version__, "check": check,
        "special_tokens": {role: getattr(tokenizer, f"{role}_token") for role in ("bos", "eos", "pad", "unk")
                           if getattr(tokenizer, f"{role}_token", None) is not None},
        "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []),
        "exported_from": (record or {}).get("source"),
    }
    extra = {"chat_template": tokenizer.chat_template} if isinstance(tokenizer.chat_template, str) else {}
    manifest = new_manifest(produced_by="import", tokenizer_json=tokenizer_json, parent=str(folder.resolve()),
                            hf=hf_section, **extra)
    save_artifact(model, tokenizer_json, out, manifest=manifest)
    log.info("import: %s from %s written to %s (max |logit difference| %.2g over %d random tokens)",
             arch.hf_class, folder, out, check["max_abs_logit_diff"], check["tokens"])
    return manifest
