"""Evaluation of trained models: language-model metrics, an n-gram baseline, generation
scores, genre classification by fine-tuning, a samples pack, a report, and run comparison.
Plain PyTorch and numpy: no Lightning, no Hydra."""

from lightning_llm.evaluation.compare import compare
from lightning_llm.evaluation.config import TASKS, EvalConfig
from lightning_llm.evaluation.evaluate import evaluate
from lightning_llm.evaluation.ngram import KneserNey

__all__ = ["TASKS", "EvalConfig", "KneserNey", "compare", "evaluate"]
