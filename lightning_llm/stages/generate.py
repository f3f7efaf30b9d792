"""llm generate: print a prompt and its sampled continuation; with `messages` (or `template`), a
conversation rendered with a chat template, as the server renders it, and its continuation."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import to_dataclass
from lightning_llm.data.tokenizer import decode_text, encode_prompt
from lightning_llm.errors import UserError
from lightning_llm.model.generation import inference_dtype, prepare_for_inference
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
    dtype: str = "auto"  # the faster of float32 and bfloat16 here, measured once (generation.choose_dtype)

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
    chat = chat_request(cfg)  # checked before the model loads: a wrong template or role fails in a second
    artifact = load_artifact(args.ckpt, device=args.device)
    model, tokenizer = artifact.model, artifact.tokenizer
    try:  # weights cast once, here (bf16 halves the bytes each token reads); the file is untouched
        dtype, why = inference_dtype(model, args.dtype, batch=args.num_samples)
    except ValueError as err:
        raise UserError(str(err)) from None
    prepare_for_inference(model, dtype)
    if args.dtype != "float32":
        print(f"note: {why}", file=sys.stderr)
    prompt = str(args.prompt) if chat is None else chat_prompt(*chat, artifact=artifact)
    ids = encode_prompt(tokenizer, prompt)
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


def chat_request(cfg: DictConfig):
    """(template or None for the model's own, messages) when the run renders a conversation:
    `messages` given, or `template` given (the prompt is then one user turn); else None."""
    from lightning_llm.templates import parse_messages, template_from_node

    if cfg.get("messages") is None and cfg.get("template") is None:
        return None
    messages = parse_messages(cfg.messages) if cfg.get("messages") is not None else \
        [{"role": "user", "content": str(cfg.prompt)}]
    template = template_from_node(cfg.template) if cfg.get("template") is not None else None
    if template is not None:
        template.check(messages)
    return template, messages


def chat_prompt(template, messages: list[dict], *, artifact) -> str:
    """The conversation as prompt text, with the template given or the one the model records (as the server does)."""
    from lightning_llm.serving.text import special_tokens
    from lightning_llm.templates import model_template

    template = template or model_template(artifact.manifest)
    return template.render(messages, specials=special_tokens(artifact.tokenizer))
