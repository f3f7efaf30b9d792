"""Post-training quantization of a GPT: dtype casts (bf16, fp16) and torchao's int8/int4 weights.

torchao (`quantize_` with a config object) replaces each linear layer's weight by a tensor
subclass that holds the integer data and its scales; model/io.py writes and reads those with
torchao's safetensors support, so a quantized folder loads with no flag and no pickle. The
embeddings stay in float: a char or small-vocabulary model keeps almost all of its weights in
the blocks, and the tied embedding doubles as the LM head, which torchao's embedding path does
not share.

What each scheme needs (torchao 0.18, torch 2.13):
  bf16, fp16        a cast; bf16 matmuls are native on CPUs with AVX-512 BF16 or AMX, emulated elsewhere
  int8_weight_only  Int8WeightOnlyConfig: int8 weights, per-channel scales, float activations; any CPU
  int8_dynamic      Int8DynamicActivationInt8WeightConfig: activations quantized per token at run time
  int4_weight_only  Int4WeightOnlyConfig: on a CPU no packing format runs (plain needs the CUDA-only
                    mslk kernels, plain_int32 is XPU/NPU only, tile_packed_to_4d is CUDA tinygemm
                    in bf16), so it needs a CUDA GPU, where it uses tile_packed_to_4d
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from lightning_llm.errors import UserError
from lightning_llm.model import GPT
from lightning_llm.model.io import quiet_torchao

SCHEMES = ("bf16", "fp16", "int8_weight_only", "int8_dynamic", "int4_weight_only")
GOALS = ("size", "speed")
CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
INSTALL = "pip install torchao (or pip install 'lightning-llm[compress]')"


def torchao_version() -> str | None:
    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def unsupported(scheme: str, device: str) -> str | None:
    """Why `scheme` cannot run on `device` here, or None when it can."""
    if scheme not in SCHEMES:
        return f"unknown scheme {scheme!r}; schemes are {', '.join(SCHEMES)}"
    if scheme in CASTS:
        return None
    if torchao_version() is None:
        return f"{scheme} needs torchao: {INSTALL}"
    if scheme == "int4_weight_only" and not str(device).startswith("cuda"):
        return ("int4_weight_only needs a CUDA GPU: torchao's Int4WeightOnlyConfig has no CPU kernel here (plain "
                "packing needs mslk's CUDA kernels, plain_int32 runs on XPU/NPU, tile_packed_to_4d on CUDA); "
                "on this CPU use int8_weight_only (size) or bf16 (speed)")
    return None


def check_scheme(scheme: str, device: str) -> None:
    reason = unsupported(scheme, device)
    if reason:
        raise UserError(f"quantize.scheme={scheme}: {reason}" if scheme in SCHEMES else f"quantize.scheme: {reason}")


def _torchao_config(scheme: str, group_size: int):
    quiet_torchao()
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if scheme == "int8_weight_only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if scheme == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d",
                                set_inductor_config=False)


def quantize(model: GPT, scheme: str, *, device: str = "cpu", group_size: int = 128) -> GPT:
    """A quantized copy of `model` (the original is left as it is)."""
    check_scheme(scheme, device)
    out = copy.deepcopy(model).to(device).eval()
    if scheme in CASTS:
        return out.to(CASTS[scheme])
    quiet_torchao()
    from torchao.quantization import quantize_

    if scheme == "int4_weight_only":
        out.to(torch.bfloat16)  # tinygemm's int4 kernel takes bf16 activations
    tied = model.config.tie_embeddings

    def linear(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not (tied and fqn == "lm_head")

    quantize_(out, _torchao_config(scheme, group_size), filter_fn=linear)
    return out


def manifest_entry(scheme: str, model: GPT, *, group_size: int = 128) -> dict:
    """The manifest's `quantization` section: what model/io.py needs to rebuild the model."""
    dtype = next(p.dtype for p in model.parameters() if type(p.data) is torch.Tensor or p.dtype.is_floating_point)
    entry = {"scheme": scheme, "dtype": DTYPE_NAMES.get(dtype, "float32"),
             "weights": "safetensors" if scheme in CASTS else "torchao-safetensors"}
    if scheme not in CASTS:
        entry["torchao"] = torchao_version()
        entry["quantized"] = "linear layers of the blocks" + ("" if model.config.tie_embeddings else " and the LM head")
    if scheme == "int4_weight_only":
        entry.update(group_size=group_size, needs="cuda")
    return entry


def pick_scheme(model: GPT, goal: str, *, device: str = "cpu", tokenizer=None, data=None,
                max_bpb_increase: float = 0.01, max_tokens: int | None = 50_000, new_tokens: int = 32,
                repeats: int = 3, group_size: int = 128) -> tuple[str, dict[str, dict]]:
    """The scheme that best serves `goal` on this machine, measured: every scheme this device runs,
    quantized, timed at batch 1 (interleaved, best of `repeats`) and, given data, scored on the
    first max_tokens of val; a scheme more than max_bpb_increase worse than the original in bits
    per byte is not eligible. speed: the most tokens/s; size: the fewest weight bytes."""
    from lightning_llm.compress.measure import bits_per_byte, generation_speed, weight_bytes

    if goal not in GOALS:
        raise UserError(f"quantize.goal={goal!r}: goals are {', '.join(GOALS)} (or null to name a scheme)")
    candidates = [s for s in SCHEMES if unsupported(s, device) is None]
    models = {"original": model, **{s: quantize(model, s, device=device, group_size=group_size) for s in candidates}}
    speed = generation_speed(models, batch_sizes=(1,), new_tokens=new_tokens, repeats=repeats)
    rows = {name: {"tokens_per_s_b1": round(speed[name][1], 1), "weight_bytes": weight_bytes(m)}
            for name, m in models.items()}
    if data is not None:
        for name, m in models.items():
            rows[name]["val_bpb"] = bits_per_byte(m, tokenizer, data, "val", max_tokens=max_tokens,
                                                  device=device)["bpb"]
        limit = rows["original"]["val_bpb"] * (1 + max_bpb_increase)
        for name in candidates:
            rows[name]["eligible"] = rows[name]["val_bpb"] <= limit
    eligible = [s for s in candidates if rows[s].get("eligible", True)]
    if not eligible:
        raise UserError(f"quantize.goal={goal}: no scheme keeps val bits per byte within "
                        f"{max_bpb_increase:.1%} of the original here (raise quantize.max_bpb_increase)")
    if goal == "speed":
        chosen = max(eligible, key=lambda s: rows[s]["tokens_per_s_b1"])
    else:
        chosen = min(eligible, key=lambda s: (rows[s]["weight_bytes"], -rows[s]["tokens_per_s_b1"]))
    return chosen, rows
