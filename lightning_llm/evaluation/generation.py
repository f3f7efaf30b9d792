"""Scores of generated continuations against the true ones, and of their diversity.

BLEU (sacrebleu, corpus level, 0-100) and ROUGE-L (rouge-score, mean F-measure, 0-1)
measure overlap with the held-out continuation; distinct-n (unique word n-grams over all
n-grams of all continuations) measures how little a model repeats itself. A sampled
continuation is one of many plausible ones, so overlap scores stay low even for a good
model: they are for comparing systems on the same passages, not absolute quality.
"""

from __future__ import annotations

import numpy as np
import torch
from rouge_score import rouge_scorer
from rouge_score import tokenizers as rouge_tokenizers
from sacrebleu.metrics import BLEU
from tokenizers import Tokenizer

from lightning_llm.model import GPT


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def continuation_scores(hypotheses: list[str], references: list[str], *, n_resamples: int = 1000,
                        seed: int = 0) -> dict:
    """BLEU and ROUGE-L with 95% bootstrap intervals over the passages, and distinct-n.

    BLEU's interval is sacrebleu's own (`n_bootstrap`): corpus BLEU recomputed on resampled
    passages, reported as its bootstrap mean +- half the 2.5-97.5 percentile range, with
    sacrebleu's fixed seed (SACREBLEU_SEED, 12345 unless set). ROUGE-L's is the 2.5-97.5
    percentiles of the mean per-passage F-measure over `n_resamples` resamples, seeded by `seed`."""
    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=rouge_tokenizers.DefaultTokenizer(use_stemmer=False))
    rouge_l = np.array([rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)])
    bleu = BLEU().corpus_score(hypotheses, [references], n_bootstrap=n_resamples if len(hypotheses) > 1 else 1)
    scores = {"bleu": float(bleu.score), "bleu_ci": None, "rougeL": float(np.mean(rouge_l)),
              "rougeL_ci": mean_interval(rouge_l, n_resamples=n_resamples, seed=seed)}
    if len(hypotheses) > 1:  # sacrebleu leaves _mean/_ci at -1 without a bootstrap
        scores["bleu_ci"] = [max(0.0, float(bleu._mean - bleu._ci)), min(100.0, float(bleu._mean + bleu._ci))]
    return scores | diversity(hypotheses)


def mean_interval(values: np.ndarray, *, n_resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of the mean of `values` (None for fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]


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
