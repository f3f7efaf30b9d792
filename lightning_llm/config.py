"""What every layer may share about configuration, with no Lightning and no Hydra app in it:
where the config tree lives, checking a config node into a dataclass, one-line error text,
the names that may become paths, and the prefixes of what config may build.

Stages (lightning_llm/stages/) and packages (sweep/, serving/, ...) import it; it imports
neither of them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_llm.errors import UserError


def _shipped(name: str) -> Path:
    """conf/ and sweeps/ sit at the top of a source checkout; a wheel carries them inside the package."""
    packaged = Path(__file__).resolve().parent / name
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / name


CONF_DIR = str(_shipped("conf"))
SWEEPS_DIR = _shipped("sweeps")

# A name that becomes a folder: letters, digits, '_', '.', '-'; never '.' or '..' or a path.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(value, what: str) -> str:
    """Refuse, in one line, a user-given name that would not stay one folder under its root."""
    text = str(value)
    if not _NAME.fullmatch(text) or ".." in text:
        raise UserError(f"{what}={text!r} becomes a folder name: use letters, digits, '_', '.' or '-' "
                        "(no '/', no '..', at most 128 characters)")
    return text


def to_dataclass(cls, node: DictConfig | dict, where: str, **fixed):
    """Build a config dataclass from a config node: unknown keys, wrong types and impossible
    values (the dataclass's own checks) become one UserError that names the node once."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields - set(fixed))}")
    try:
        schema = OmegaConf.structured(cls)
        merged = OmegaConf.merge(schema, {**values, **fixed})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(prefixed(where, str(err).splitlines()[0])) from None
    except (ValueError, TypeError) as err:
        raise UserError(prefixed(where, str(err))) from None


def prefixed(where: str, message: str) -> str:
    """`where: message`, unless the message already starts with that prefix."""
    return message if message.startswith(f"{where}:") or message.startswith(f"{where}.") else f"{where}: {message}"


def one_line(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line reports as one line a user can act on."""
    if "Lexer" in type(err).__name__ or "OverrideParse" in type(err).__name__:
        return (f"cannot parse the override {str(err).splitlines()[0].split(': ', 1)[-1]!r}: quote a value "
                "with spaces or symbols, e.g. 'prompt=\"ROMEO: Hark\"'")
    text = str(err).split("Config search path")[0]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(lines).replace("\t", " ")


# What config may build: classes and functions under these prefixes, and what the user adds
# with `allow_targets` (conf/train.yaml). Hydra's own block list lets `torch.load` through.
ALLOWED_TARGETS = ("lightning.pytorch.Trainer", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.",
                   "lightning.pytorch.strategies.", "lightning.pytorch.plugins.", "lightning.pytorch.profilers.",
                   "torch.optim.", "lightning_llm.training.")


def check_targets(node, where: str, *, extra: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, any `_target_` under node outside the allowed prefixes, and any private
    name (a part that starts with '_') even under them."""
    container = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    allowed = ALLOWED_TARGETS + tuple(extra)

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            target = value.get("_target_")
            if target is not None:
                text = str(target)
                exact_or_prefix = any(text == a or (a.endswith(".") and text.startswith(a)) for a in allowed)
                if not exact_or_prefix or any(part.startswith("_") for part in text.split(".")):
                    raise UserError(f"{path}._target_={text!r} is not something config may build: allowed are "
                                    f"{', '.join(allowed)} (add a trusted prefix with allow_targets=[...])")
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(container, where)


def _safe_name_resolver(value):
    return check_name(value, "experiment_name")


# The run dir's path is built from experiment_name: a name that is not one folder fails before
# Hydra creates anything (conf/hydra/default.yaml uses ${safe_name:${experiment_name}}).
if not OmegaConf.has_resolver("safe_name"):
    OmegaConf.register_new_resolver("safe_name", _safe_name_resolver)
if not OmegaConf.has_resolver("pid"):
    OmegaConf.register_new_resolver("pid", lambda: os.getpid())
