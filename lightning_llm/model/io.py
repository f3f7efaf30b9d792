"""The one module that knows the artifact formats: Lightning checkpoints and model folders.

A model folder (the inference artifact) holds

  model.safetensors   the weights (no pickle)
  config.json         the GPTConfig
  tokenizer.json      the HF tokenizers file
  manifest.json       what it is: format version, what produced it, its parent, its data

Later stages (compression, fine-tuning, the registry, export) add their own keys to the
manifest instead of inventing files of their own. `load_artifact` reads every kind of
artifact (a model folder, a training run dir, a .ckpt) and `save_artifact` writes the folder;
nothing else in the package opens these files. Checkpoints are read with `weights_only=True`,
whatever the environment says: no pickle from an untrusted file ever runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lightning_llm.artifacts import staged_folder
from lightning_llm.errors import UserError
from lightning_llm.model.gpt import GPT, GPTConfig

FORMAT = "lightning-llm/model"
FORMAT_VERSION = 1  # bump when a reader of version N cannot read what a writer of N+1 writes
WEIGHTS, CONFIG, TOKENIZER, MANIFEST = "model.safetensors", "config.json", "tokenizer.json", "manifest.json"

# The layout of a training checkpoint, as LanguageModel writes it.
CKPT_MODEL_CONFIG = "model_config"  # under checkpoint["hyper_parameters"]
CKPT_TOKENIZER = "tokenizer_json"
CKPT_STATE_PREFIX = "model."  # LanguageModel holds the GPT as .model


@dataclass
class Artifact:
    """A model ready to run, with the tokenizer it was trained with and what is known of it."""

    model: GPT
    tokenizer: Tokenizer
    manifest: dict
    path: Path  # the folder or checkpoint file it was read from
    tokenizer_json: str = ""  # the tokenizer file as written, byte for byte (its hash identifies it)

    @property
    def config(self) -> GPTConfig:
        return self.model.config


def tokenizer_hash(tokenizer_json: str) -> str:
    """A content hash of the tokenizer: two checkpoints whose ids mean the same tokens share it."""
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]


def package_version() -> str:
    try:
        return version("lightning-llm")
    except PackageNotFoundError:
        return "unknown"


def new_manifest(*, produced_by: str, tokenizer_json: str, parent: str | None = None,
                 data_hash: str | None = None, **extra) -> dict:
    """The manifest of a new artifact; `extra` holds a stage's own section (quantization, lora, ...)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "produced_by": produced_by,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lightning_llm": package_version(),
            "parent": parent, "data_hash": data_hash, "tokenizer_sha256": tokenizer_hash(tokenizer_json), **extra}


DEFAULT_TEMPLATE = "plain"  # conf/template/plain.yaml: the chat template of a folder that records none
IMPORTED_TEMPLATE = "model"  # the name an imported model's own chat template is known by


def manifest_template(manifest: dict) -> tuple[str, str | None]:
    """(name, Jinja source or None) of the chat template an artifact records as its default. `llm train`
    records both (`template`: a conf/template/ name, `chat_template`: its Jinja); `llm import` records
    the Hugging Face model's own Jinja alone; a folder written before templates were recorded gets the
    plain one, by name."""
    source = manifest.get("chat_template")
    source = source if isinstance(source, str) and source else None
    name = manifest.get("template") or (IMPORTED_TEMPLATE if source else DEFAULT_TEMPLATE)
    return str(name), source


def run_template(checkpoint_path: Path) -> dict:
    """The chat template a checkpoint's run records (its model/ folder's manifest), so that a run dir
    served through its best.ckpt renders as its model folder does; {} when there is none yet."""
    run_dir = run_dir_of(checkpoint_path)
    manifest_path = run_dir / "model" / MANIFEST if run_dir is not None else None
    if manifest_path is None or not manifest_path.is_file():
        return {}
    try:
        recorded = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return {}
    return {key: recorded[key] for key in ("template", "chat_template") if isinstance(recorded.get(key), str)}


# --- training checkpoints ----------------------------------------------------------------------

def read_checkpoint(path: str | Path, *, what: str = "ckpt") -> dict:
    """A Lightning checkpoint loaded without pickle, or one UserError naming the file and the fault."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, random bytes, a pickle that needs code: never trusted
        raise UserError(f"{what}={path} is not a lightning-llm checkpoint or model folder ({type(err).__name__}: "
                        f"{first_line(err)})") from None
    if not isinstance(checkpoint, dict) or CKPT_MODEL_CONFIG not in checkpoint.get("hyper_parameters", {}) \
            or "state_dict" not in checkpoint:
        raise UserError(f"{what}={path} is not a checkpoint written by `llm train` (no model config or weights)")
    return checkpoint


def checkpoint_model_config(checkpoint: dict) -> dict:
    return dict(checkpoint["hyper_parameters"][CKPT_MODEL_CONFIG])


def checkpoint_tokenizer(checkpoint: dict) -> str | None:
    return checkpoint.get(CKPT_TOKENIZER)


def add_checkpoint_tokenizer(checkpoint: dict, tokenizer_json: str) -> None:
    """The tokenizer travels inside every training checkpoint, so a .ckpt alone can generate."""
    checkpoint[CKPT_TOKENIZER] = tokenizer_json


def checkpoint_mismatch(checkpoint: dict, *, model_config: dict, tokenizer_json: str) -> str | None:
    """Why this checkpoint cannot continue a run of model_config with this tokenizer, or None."""
    saved = checkpoint_model_config(checkpoint)
    differ = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in model_config.items() if saved.get(k) != v]
    if differ:
        return f"it was trained with another model config ({', '.join(differ)})"
    saved_tokenizer = checkpoint_tokenizer(checkpoint)
    if saved_tokenizer is not None and tokenizer_hash(saved_tokenizer) != tokenizer_hash(tokenizer_json):
        return ("it was trained with another tokenizer (same vocabulary size or not, its ids mean other tokens: "
                f"tokenizer {tokenizer_hash(saved_tokenizer)} vs the data's {tokenizer_hash(tokenizer_json)})")
    return None


def checkpoint_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k[len(CKPT_STATE_PREFIX):]: v for k, v in checkpoint["state_dict"].items()
            if k.startswith(CKPT_STATE_PREFIX)}


# --- locating an artifact ----------------------------------------------------------------------

def resolve_checkpoint(path: str | Path) -> Path:
    """A file or a model folder means itself. A run dir means its best checkpoint, else its last,
    else its model/ folder (a run that keeps no checkpoints); a LoRA fine-tune's run dir means
    model/ first, since its checkpoints hold adapter layers."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"ckpt={path} does not exist: pass a training run dir, a .ckpt file or a model folder")
    if path.is_dir():
        if (path / WEIGHTS).exists() or (path / ADAPTER_WEIGHTS).exists():
            return path
        if (path / "adapter").is_dir() and (path / "model" / MANIFEST).exists():
            return path / "model"  # a LoRA fine-tune's run dir: its checkpoints hold adapter layers, model/ the model
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            if (path / candidate).exists():
                return path / candidate
        if (path / "model" / WEIGHTS).exists():  # a run without checkpoints (llm compress): its model folder
            return path / "model"
        raise UserError(f"ckpt={path} holds no model: expected {WEIGHTS} or checkpoints/best.ckpt in it")
    return path


def run_dir_of(artifact_path: Path) -> Path | None:
    """The training run dir an artifact belongs to (its model/ folder or checkpoints/ file), if any."""
    folder = artifact_path if artifact_path.is_dir() else artifact_path.parent
    return next((d for d in (folder, folder.parent) if (d / "run.json").exists()), None)


def resolve_device(device: str) -> str:
    """`auto` is the GPU when one is visible; asking for CUDA without one is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but no CUDA GPU is visible: use device=cpu")
    return device


# --- reading and writing -----------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    """The folder's manifest; a folder written before manifests existed reads as format 0."""
    path = folder / MANIFEST
    if not path.exists():
        return {"format": FORMAT, "format_version": 0, "produced_by": "unknown (written before manifests)"}
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"ckpt={folder}: {MANIFEST} names format {manifest.get('format')!r}, not {FORMAT!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"ckpt={folder} is format {manifest['format_version']}, newer than this lightning-llm reads "
                        f"({FORMAT_VERSION}): upgrade lightning-llm to load it")
    return manifest


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else ""


def _read(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], str, dict]:
    if path.is_dir():
        manifest = read_manifest(path)
        config = GPTConfig(**json.loads((path / CONFIG).read_text()))
        if not (path / WEIGHTS).exists() and (path / ADAPTER_WEIGHTS).exists():
            return config, _adapter_weights(path, config, manifest), (path / TOKENIZER).read_text(), manifest
        return config, _load_weights(path / WEIGHTS, manifest), (path / TOKENIZER).read_text(), manifest
    checkpoint = read_checkpoint(path)
    tokenizer_json = checkpoint_tokenizer(checkpoint)
    if tokenizer_json is None:
        raise UserError(f"ckpt={path} holds no tokenizer (it was not written by `llm train`): pass its run dir "
                        "or model/ folder")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "produced_by": "train (checkpoint)",
                "tokenizer_sha256": tokenizer_hash(tokenizer_json), **run_template(path)}
    return GPTConfig(**checkpoint_model_config(checkpoint)), checkpoint_weights(checkpoint), tokenizer_json, manifest


# A LoRA adapter exported alone (`llm finetune finetune.export=adapter`): peft's adapter files beside
# config.json, tokenizer.json and a manifest whose `parent` is the base artifact it applies to.
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _adapter_weights(path: Path, config: GPTConfig, manifest: dict) -> dict[str, torch.Tensor]:
    """The parent's weights with the adapter merged in (through peft, imported only here)."""
    parent = manifest.get("parent")
    if not parent or not Path(parent).exists():
        raise UserError(f"ckpt={path} is a LoRA adapter whose base ({parent}) is not there: restore the base, or "
                        "export the fine-tune with finetune.export=merged")
    base_config, state, base_tokenizer, _ = _read(resolve_checkpoint(parent))
    if base_config != config or tokenizer_hash(base_tokenizer) != manifest.get("tokenizer_sha256"):
        raise UserError(f"ckpt={path}: its base {parent} has another model config or tokenizer than the adapter's")
    from peft import PeftModel

    model = GPT(config)
    model.load_state_dict(state, strict=False)
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload().state_dict()


def load_artifact(path: str | Path, *, device: str = "cpu") -> Artifact:
    """Read any artifact (model folder, run dir, .ckpt): the model in eval mode on `device`, its
    tokenizer and manifest. Whatever is wrong with it is one UserError naming the file."""
    path = resolve_checkpoint(path)
    try:
        config, state, tokenizer_json, manifest = _read(path)
        tokenizer = Tokenizer.from_str(tokenizer_json)
    except UserError:
        raise
    except Exception as err:  # any unreadable part means this is not one of our artifacts
        raise UserError(f"ckpt={path} is not a lightning-llm checkpoint or model folder "
                        f"({type(err).__name__}: {first_line(err)})") from None
    model = GPT(config)
    quantized = manifest.get("quantization") or {}  # written by `llm compress`: the model is built as it was saved
    if quantized.get("dtype"):
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if quantized["dtype"] not in dtypes:
            raise UserError(f"ckpt={path}: {MANIFEST} names an unknown dtype {quantized['dtype']!r}")
        model.to(dtypes[quantized["dtype"]])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=bool(quantized))
    if quantized and config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # assign replaced the shared tensor: tie them again
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_embeddings else set()):
        raise UserError(f"ckpt={path}: weights do not match its config (missing {missing}, unexpected {unexpected})")
    return Artifact(model.to(device).eval(), tokenizer, manifest, path, tokenizer_json)


def save_adapter_artifact(write_adapter, config: GPTConfig, tokenizer_json: str, out_dir: str | Path, *,
                          manifest: dict) -> Path:
    """A model folder holding a LoRA adapter instead of weights: write_adapter(folder) writes peft's
    files there (PeftModel.save_pretrained); load_artifact merges them into the manifest's parent."""
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        write_adapter(staging)
        if not (staging / ADAPTER_WEIGHTS).exists() or not (staging / ADAPTER_CONFIG).exists():
            raise ValueError(f"write_adapter wrote no {ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}")
        (staging / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
        (staging / TOKENIZER).write_text(tokenizer_json)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out_dir


def save_artifact(model: GPT, tokenizer_json: str, out_dir: str | Path, *, manifest: dict) -> Path:
    """Write the folder under a temporary name and swap it in, so a crash never leaves a half folder."""
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous() if type(v) is torch.Tensor else v.detach() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors stores each tensor once; it is tok_emb's
    with staged_folder(out_dir) as staging:
        tensors, metadata = _flatten_weights(state)
        save_file(tensors, staging / WEIGHTS, metadata={"format": FORMAT, **metadata})
        (staging / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
        (staging / TOKENIZER).write_text(tokenizer_json)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out_dir


# Quantized weights are torchao tensor subclasses (int8 data and scales in one object). They are
# stored with torchao's own safetensors support: each becomes plain tensors plus JSON metadata, and
# is rebuilt on load from an allow-list of torchao classes; no pickle either way. The manifest's
# `quantization.weights` says which reader a folder needs.
TORCHAO_WEIGHTS = "torchao-safetensors"


def quiet_torchao() -> None:
    """torchao logs, at import, kernels this machine lacks (CUDA libraries, Triton) and torch a deprecation:
    noise in front of every `llm generate` of a quantized model."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _flatten_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if all(type(v) is torch.Tensor for v in state.values()):
        return state, {}
    quiet_torchao()
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(state)
    return tensors, {**metadata, "weights": TORCHAO_WEIGHTS}


def _load_weights(path: Path, manifest: dict) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    if (manifest.get("quantization") or {}).get("weights") != TORCHAO_WEIGHTS:
        return tensors
    quiet_torchao()
    try:
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    except ImportError:
        raise UserError(f"ckpt={path.parent} is quantized with torchao ({manifest['quantization'].get('scheme')}): "
                        "pip install torchao (or 'lightning-llm[compress]') to load it") from None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    return {**leftover, **state}
