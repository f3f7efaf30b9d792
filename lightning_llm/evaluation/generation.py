"""Scores of generated continuations against the true ones, and of their diversity.

BLEU (sacrebleu, corpus level, 0-100) and ROUGE-L (rouge-score, mean F-measure, 0-1)
measure overlap with the held-out continuation; distinct-n (unique word n-grams over all
n-grams of all continuations) measures how little a model repeats itself. A sampled
continuation is one of many plausible ones, so overlap scores stay low even for a good
model: they are for comparing systems on the same passages, not absolute quality.
"""

from __future__ import annotations

import numpy as np
import sacrebleu
import torch
from rouge_score import rouge_scorer
from rouge_score import tokenizers as rouge_tokenizers
from tokenizers import Tokenizer

from lightning_llm.model import GPT


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def continuation_scores(hypotheses: list[str], references: list[str]) -> dict:
    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=rouge_tokenizers.DefaultTokenizer(use_stemmer=False))
    rouge_l = [rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
            "rougeL": float(np.mean(rouge_l)), **diversity(hypotheses)}


def diversity(texts: list[str]) -> dict:
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}


def decode(tokenizer: Tokenizer, rows: np.ndarray) -> list[str]:
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in rows]


def transformer_continuations(model: GPT, prompts: np.ndarray, new_tokens: int, temperature: float,
                              top_k: int | None, seed: int, device: str) -> np.ndarray:
    """(K, new_tokens) sampled continuations of the (K, N) prompts, in one seeded batch."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.from_numpy(prompts).to(device)
    out = model.generate(idx, new_tokens, temperature, top_k, generator=generator)
    return out[:, prompts.shape[1]:].cpu().numpy()
