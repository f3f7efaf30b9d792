"""LoRA through peft on the GPT's own nn.Linear layers (attention qkv/proj, MLP up/down).

`get_peft_model` injects the adapters into our GPT in place: the GPT object stays what
LanguageModel trains and generates with, its base weights frozen (requires_grad False), and the
returned PeftModel is the handle for saving the adapter and merging it. The tied token
embedding / LM head is never a target.
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from lightning_llm.artifacts import staged_folder
from lightning_llm.errors import UserError
from lightning_llm.finetune.config import LoraSettings
from lightning_llm.model import GPT

NEVER = ("lm_head",)  # tied to the token embedding: an adapter there would untie them


def linear_names(model: nn.Module) -> dict[str, int]:
    """The last name of each nn.Linear of the model, with how many layers carry it."""
    names: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            short = name.rsplit(".", 1)[-1]
            names[short] = names.get(short, 0) + 1
    return names


def check_targets(model: GPT, settings: LoraSettings) -> dict[str, int]:
    """The target layers' names and counts; a name that is no linear layer of the model (or is the
    tied LM head) is one UserError listing the names there are."""
    available = {k: v for k, v in linear_names(model).items() if k not in NEVER}
    unknown = sorted(set(settings.target_modules) - set(available))
    if unknown:
        raise UserError(f"finetune.lora.target_modules: {unknown} name no linear layer of this model; "
                        f"its layers are {', '.join(sorted(available))}")
    return available


def add_lora(model: GPT, settings: LoraSettings) -> PeftModel:
    """Wrap the target layers in LoRA adapters (in place) and freeze everything else."""
    available = check_targets(model, settings)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    wrapped = get_peft_model(model, config)
    adapted = sum(isinstance(m, LoraLayer) for m in model.modules())
    expected = sum(available[name] for name in set(settings.target_modules))
    if adapted != expected:  # peft matched by another rule than our names: refuse rather than train the wrong layers
        raise UserError(f"peft wrapped {adapted} layers, expected {expected} ({settings.target_modules})")
    return wrapped


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_adapter(wrapped: PeftModel, folder: Path) -> None:
    """peft's own format (adapter_config.json + adapter_model.safetensors) into an existing folder:
    `PeftModel.from_pretrained(GPT(config), folder)` reads it."""
    wrapped.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model-card stub says nothing about this model


def save_adapter(wrapped: PeftModel, folder: Path) -> Path:
    """The adapter alone, written whole or not at all."""
    with staged_folder(folder) as staging:
        write_adapter(wrapped, staging)
    return folder


def merged_copy(wrapped: PeftModel) -> GPT:
    """A plain GPT whose weights are base + (alpha / rank) * B @ A: the adapter model's function,
    with no adapter left. The adapter model itself is untouched."""
    merged = copy.deepcopy(wrapped).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def apply_adapter(model: GPT, folder: Path) -> GPT:
    """The base model with a saved adapter merged in (what finetune.export=merged exported)."""
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
