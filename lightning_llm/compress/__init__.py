"""Compression of a trained GPT: quantization (dtype casts and torchao int8/int4), pruning
(magnitude, attention heads, MLP channels) and the measurements that compare a compressed model
with its original. Plain PyTorch and torchao: the recovery fine-tune and distillation run through
the Lightning loop in lightning_llm/training/, driven by the stages."""

from lightning_llm.compress.measure import generation_speed, measure, parameters, weight_bytes
from lightning_llm.compress.prune import IMPORTANCE, KINDS, importance, magnitude, removed_count, structured
from lightning_llm.compress.quantize import GOALS, SCHEMES, check_scheme, pick_scheme, quantize, unsupported

__all__ = ["GOALS", "IMPORTANCE", "KINDS", "SCHEMES", "check_scheme", "generation_speed", "importance", "magnitude",
           "measure", "parameters", "pick_scheme", "quantize", "removed_count", "structured", "unsupported",
           "weight_bytes"]
