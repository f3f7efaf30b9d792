"""Inference artifacts: a folder with model.safetensors, config.json and tokenizer.json.

Everything downstream (generation, evaluation, serving) loads a model through
`load_pretrained`, from that folder, a training run dir, or a Lightning checkpoint.
Checkpoints are read with `weights_only=True`: no pickle from an untrusted file runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lightning_llm.errors import UserError
from lightning_llm.model.gpt import GPT, GPTConfig


def save_pretrained(model: GPT, tokenizer_json: str, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors stores each tensor once; it is tok_emb's
    save_file(state, staging / "model.safetensors")
    (staging / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    (staging / "tokenizer.json").write_text(tokenizer_json)
    if out_dir.exists():
        for old in out_dir.iterdir():
            old.unlink()
        out_dir.rmdir()
    os.rename(staging, out_dir)
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


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    path = resolve_checkpoint(path)
    if path.is_dir():
        config = GPTConfig(**json.loads((path / "config.json").read_text()))
        model = GPT(config)
        state = load_file(path / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise UserError(f"{path}: weights do not match config.json (missing {missing}, unexpected {unexpected})")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            config = GPTConfig(**ckpt["hyper_parameters"]["model_config"])
            tokenizer = Tokenizer.from_str(ckpt["tokenizer_json"])
        except Exception as err:
            raise UserError(f"ckpt={path} is not a lightning-llm checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
        model = GPT(config)
        prefix = "model."
        model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return model.to(device).eval(), tokenizer
