"""The `finetune:` section of conf/finetune.yaml, as a dataclass that checks itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("full", "lora")
FORGET_METHODS = ("unlikelihood", "ascent")  # lightning_llm/finetune/forget.py
FORMATS = ("text", "instruction")
EXPORTS = ("merged", "adapter")


@dataclass
class LoraSettings:
    """peft's LoraConfig knobs that matter here; target_modules name our nn.Linear layers."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "proj", "up", "down"])

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: name at least one of qkv, proj, up, down")


@dataclass
class FinetuneConfig:
    method: str = "full"  # full: every weight trains | lora: low-rank adapters on target_modules, the rest frozen
    format: str = "text"  # text: data= is prepared like `llm prepare` | instruction: JSONL of prompt/response or messages
    export: str = "merged"  # model/ holds the merged weights (a plain model folder) or only the adapter (lora)
    template: str | None = None  # instruction: a conf/template/ name (None: the base model's own template)
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_unknown_rate: float = 0.001  # warn before training when more of the new text maps to <|unk|>
    base_data: str | None = None  # the base domain's prepared folder (default: the one the base was trained on)
    eval_windows: int = 64  # windows of block_size per domain for the before/after losses
    val_fraction: float = 0.1  # instruction: share of records held out (at least one)
    # the text to push the model away from: a prepared-data folder or a data config (a mapping, as data:)
    forget: Any = None
    forget_method: str = "unlikelihood"  # unlikelihood: -log(1 - p) | ascent: -min(NLL, forget_cap)
    forget_weight: float = 1.0  # the forget term's weight against the retain NLL
    forget_cap: float | None = None  # ascent: per-token NLL cap in nats (None: log(vocab_size), a uniform guess)

    def __post_init__(self):
        for key, value, allowed in (("method", self.method, METHODS), ("format", self.format, FORMATS),
                                    ("export", self.export, EXPORTS)):
            if value not in allowed:
                raise ValueError(f"finetune.{key} must be one of {', '.join(allowed)}, got {value!r}")
        if self.export == "adapter" and self.method != "lora":
            raise ValueError("finetune.export=adapter needs finetune.method=lora (a full fine-tune has no adapter)")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"finetune.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.forget_method not in FORGET_METHODS:
            raise ValueError(f"finetune.forget_method must be one of {', '.join(FORGET_METHODS)}, "
                             f"got {self.forget_method!r}")
        if self.forget_weight <= 0:
            raise ValueError(f"finetune.forget_weight must be above 0, got {self.forget_weight}")
        if self.forget_cap is not None and self.forget_cap <= 0:
            raise ValueError(f"finetune.forget_cap must be above 0 (nats), got {self.forget_cap}")
        if self.forget is not None and not isinstance(self.forget, (str, dict)):
            raise ValueError("finetune.forget must be a prepared-data folder or a data config "
                             f"({{source: ..., ...}}), got {self.forget!r}")
        if self.eval_windows < 1:
            raise ValueError(f"finetune.eval_windows must be at least 1, got {self.eval_windows}")
