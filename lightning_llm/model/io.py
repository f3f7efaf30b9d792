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
    """A run dir means its exported model/ folder, else its best checkpoint, else its last; a
    file or a model folder means itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"ckpt={path} does not exist: pass a training run dir, a .ckpt file or a model folder")
    if path.is_dir():
        if (path / WEIGHTS).exists():
            return path
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            if (path / candidate).exists():
                return path / candidate
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
        return config, load_file(path / WEIGHTS), (path / TOKENIZER).read_text(), manifest
    checkpoint = read_checkpoint(path)
    tokenizer_json = checkpoint_tokenizer(checkpoint)
    if tokenizer_json is None:
        raise UserError(f"ckpt={path} holds no tokenizer (it was not written by `llm train`): pass its run dir "
                        "or model/ folder")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "produced_by": "train (checkpoint)",
                "tokenizer_sha256": tokenizer_hash(tokenizer_json)}
    return GPTConfig(**checkpoint_model_config(checkpoint)), checkpoint_weights(checkpoint), tokenizer_json, manifest


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
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_embeddings else set()):
        raise UserError(f"ckpt={path}: weights do not match its config (missing {missing}, unexpected {unexpected})")
    return Artifact(model.to(device).eval(), tokenizer, manifest, path)


def save_artifact(model: GPT, tokenizer_json: str, out_dir: str | Path, *, manifest: dict) -> Path:
    """Write the folder under a temporary name and swap it in, so a crash never leaves a half folder."""
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors stores each tensor once; it is tok_emb's
    with staged_folder(out_dir) as staging:
        save_file(state, staging / WEIGHTS, metadata={"format": FORMAT})
        (staging / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
        (staging / TOKENIZER).write_text(tokenizer_json)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out_dir
