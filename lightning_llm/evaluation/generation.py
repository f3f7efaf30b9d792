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
    """BLEU and ROUGE-L with 95% percentile-bootstrap intervals over the passages, and distinct-n.

    BLEU's interval: corpus BLEU recomputed on `n_resamples` resamples of the passages from their
    n-gram statistics (bleu_interval); ROUGE-L's: the mean per-passage F-measure over as many
    resamples. Both are the 2.5-97.5 percentiles, seeded by `seed`."""
    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=rouge_tokenizers.DefaultTokenizer(use_stemmer=False))
    rouge_l = np.array([rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)])
    bleu = BLEU().corpus_score(hypotheses, [references])
    return {"bleu": float(bleu.score), "rougeL": float(np.mean(rouge_l)),
            "bleu_ci": bleu_interval(hypotheses, references, n_resamples=n_resamples, seed=seed),
            "rougeL_ci": mean_interval(rouge_l, n_resamples=n_resamples, seed=seed)} | diversity(hypotheses)


def bleu_statistics(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Per passage: hypothesis length, reference length, matching and total n-grams (n = 1..4), as
    sacrebleu counts them for corpus BLEU (sentence_score's counts; effective_order only changes its score)."""
    metric = BLEU(effective_order=True)
    rows = []
    for hyp, ref in zip(hypotheses, references):
        s = metric.sentence_score(hyp, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2 + 2 * metric.max_ngram_order)


def corpus_bleu(stats: np.ndarray, metric: BLEU | None = None) -> float:
    """Corpus BLEU of per-passage statistics (their column sums), with `metric`'s settings
    (sacrebleu's defaults: exp smoothing): what metric.corpus_score gives on those passages."""
    metric = metric or BLEU()
    n, total = metric.max_ngram_order, stats.sum(axis=0)
    return float(BLEU.compute_bleu(correct=total[2:2 + n].tolist(), total=total[2 + n:].tolist(),
                                   sys_len=int(total[0]), ref_len=int(total[1]), smooth_method=metric.smooth_method,
                                   smooth_value=metric.smooth_value, effective_order=metric.effective_order,
                                   max_ngram_order=n).score)


def bleu_interval(hypotheses: list[str], references: list[str], *, n_resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of corpus BLEU over the passages (None for fewer than two)."""
    if len(hypotheses) < 2:
        return None
    stats = bleu_statistics(hypotheses, references)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(stats), size=(n_resamples, len(stats)))
    metric = BLEU()
    scores = [corpus_bleu(stats[row], metric) for row in draws]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(scores, [tail, 100 - tail])
    return [float(lo), float(hi)]


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
