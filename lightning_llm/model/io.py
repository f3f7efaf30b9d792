"""Inference artifacts: a folder with model.safetensors, config.json and tokenizer.json.

Everything downstream (generation, evaluation, serving) loads a model through
`load_pretrained`, from that folder, a training run dir, or a Lightning checkpoint.
Checkpoints are read with `weights_only=True`: no pickle from an untrusted file runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lightning_llm.errors import UserError
from lightning_llm.model.gpt import GPT, GPTConfig


def save_pretrained(model: GPT, tokenizer_json: str, out_dir: str | Path) -> Path:
    """Write the folder under a temporary name and swap it in, so a crash never leaves a half folder."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o755)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight")  # safetensors stores each tensor once; it is tok_emb's
        save_file(state, staging / "model.safetensors")
        (staging / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        (staging / "tokenizer.json").write_text(tokenizer_json)
        previous = out_dir.with_name(f".{out_dir.name}.previous")
        if out_dir.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(out_dir, previous)
        os.rename(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir means its best checkpoint (else its last); a file or model folder means itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"ckpt={path} does not exist: pass a training run dir, a .ckpt file or a model folder")
    if path.is_dir():
        if (path / "model.safetensors").exists():
            return path
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            if (path / candidate).exists():
                return path / candidate
        raise UserError(f"ckpt={path} holds no model: expected model.safetensors or checkpoints/best.ckpt in it")
    return path


def resolve_device(device: str) -> str:
    """`auto` is the GPU when one is visible; asking for CUDA without one is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but no CUDA GPU is visible: use device=cpu")
    return device


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    path = resolve_checkpoint(path)
    try:
        if path.is_dir():
            config = GPTConfig(**json.loads((path / "config.json").read_text()))
            state = load_file(path / "model.safetensors")
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            config = GPTConfig(**ckpt["hyper_parameters"]["model_config"])
            tokenizer = Tokenizer.from_str(ckpt["tokenizer_json"])
            state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    except Exception as err:  # any unreadable part means this is not one of our artifacts
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"ckpt={path} is not a lightning-llm checkpoint or model folder "
                        f"({type(err).__name__}: {first_line})") from None
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_embeddings else set()):
        raise UserError(f"ckpt={path}: weights do not match its config (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), tokenizer
