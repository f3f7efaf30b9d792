"""llm generate: print a prompt and its sampled continuation."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import to_dataclass
from lightning_llm.data.tokenizer import decode_text, encode_prompt
from lightning_llm.model.io import load_artifact, resolve_device
from lightning_llm.stages.common import stage


@dataclass
class GenerateConfig:
    """The checked form of conf/generate.yaml, which holds the defaults."""

    ckpt: str
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float
    num_samples: int
    seed: int
    device: str

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_samples < 1 or (self.top_k is not None and self.top_k < 1):
            raise ValueError("max_new_tokens, num_samples and top_k must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number of at least 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p}")
        self.device = resolve_device(self.device)


@stage("generate")
def main(cfg: DictConfig) -> list[str]:
    args = to_dataclass(GenerateConfig, OmegaConf.masked_copy(cfg, [f.name for f in fields(GenerateConfig)]),
                        "generate")
    artifact = load_artifact(args.ckpt, device=args.device)
    model, tokenizer = artifact.model, artifact.tokenizer
    ids = encode_prompt(tokenizer, str(args.prompt))
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"note: the prompt has {len(ids)} tokens, more than the model's context (block_size {block_size}): "
              f"it continues from the last {block_size}", file=sys.stderr)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    idx = torch.tensor([ids] * args.num_samples, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, generator=generator, top_p=args.top_p)
    texts = [decode_text(tokenizer, row.tolist()) for row in out]
    print(("\n" + "-" * 40 + "\n").join(texts))
    return texts
