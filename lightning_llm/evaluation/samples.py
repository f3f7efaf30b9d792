"""The human-evaluation pack: fixed prompts, outputs at several temperatures, side by side."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import decode_text, prompt_ids
from lightning_llm.evaluation.ngram import KneserNey
from lightning_llm.model import GPT


def samples_markdown(model: GPT, tokenizer: Tokenizer, prompts: list[str], temperatures: list[float],
                     new_tokens: int, top_k: int | None, seed: int, device: str,
                     ngram: KneserNey | None = None) -> str:
    """For each prompt, one continuation per temperature (each seeded alike, so only the
    temperature differs), and the n-gram baseline's at the highest temperature."""
    lines = ["# Samples for human evaluation", "",
             f"{new_tokens} new tokens, top-k {top_k}, seed {seed}. Read across temperatures: low is safe and "
             "repetitive, high is varied and error-prone.", ""]
    model.eval()
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        lines += [f"## Prompt: {prompt!r}", ""]
        for temperature in temperatures:
            generator = torch.Generator(device=device).manual_seed(seed)
            out = model.generate(torch.tensor([ids], device=device), new_tokens, temperature, top_k,
                                 generator=generator)
            lines += [f"### transformer, temperature {temperature}", "", fence(tokenizer, out[0].tolist()), ""]
        if ngram is not None:
            out = ngram.generate(np.array([ids]), new_tokens, max(temperatures), top_k, np.random.default_rng(seed))
            lines += [f"### {ngram.order}-gram Kneser-Ney baseline, temperature {max(temperatures)}", "",
                      fence(tokenizer, out[0].tolist()), ""]
    return "\n".join(lines)


def fence(tokenizer: Tokenizer, ids: list[int]) -> str:
    text = decode_text(tokenizer, ids).strip("\n")
    return f"```text\n{text}\n```"
