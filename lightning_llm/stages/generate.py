"""llm generate: print a prompt and its sampled continuation."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lightning_llm.data.tokenizer import EOT, encode_prompt
from lightning_llm.errors import UserError
from lightning_llm.model.io import load_pretrained
from lightning_llm.stages.common import stage


@stage("generate")
def main(cfg: DictConfig) -> list[str]:
    if cfg.max_new_tokens < 1 or cfg.temperature < 0 or (cfg.top_k is not None and cfg.top_k < 1):
        raise UserError("max_new_tokens and top_k must be at least 1 and temperature at least 0")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model, tokenizer = load_pretrained(cfg.ckpt, device)
    ids = encode_prompt(tokenizer, str(cfg.prompt))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, device=device)
    out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator=generator)
    texts = [tokenizer.decode(row.tolist(), skip_special_tokens=False).replace(EOT, "\n\n") for row in out]
    print(("\n" + "-" * 40 + "\n").join(texts))
    return texts
