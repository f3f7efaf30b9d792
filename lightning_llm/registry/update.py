"""`llm update`'s parts that are not training: the replay mixture, the old domain of a registry
version, the evaluation gate, and registering the result (promoted or not) under the registry's lock.

An update continues the live version on new data; a share `replay` of each training batch's windows
is drawn from the train splits of the data its line already saw (the registry's data fingerprints,
found in the data cache), the rest from the new data. Both domains are scored before and after on
frozen held-out windows (finetune's fixed windows of each val split): the new data's and the line's
first data (the original domain, the same for every update of the line). The gate passes when the
new-domain loss falls by more than `min_improvement` and the old-domain loss rises by no more than
`max_forgetting` (nats per token; a negative margin demands that it fall).

With `remove=<data>` (a prepared folder or a data config, as finetune.forget takes it) the update
also pushes the model away from that text (lightning_llm/finetune/forget.py) and data= is what it
keeps (new text, or the line's own data): the gate then asks that the removed text's held-out loss
rise by at least `min_removal` and that neither the old domain's nor data='s loss rise by more than
`max_forgetting` (nothing has to improve).

The new version is registered either way, with an `update` section in its manifest (parent, losses,
the gate's verdict and why); it becomes live only if the gate passed and the version it was trained
from is still the live one (an update finished first keeps its place: two updates never both become
live)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from lightning_llm.artifacts import write_json
from lightning_llm.data import PreparedData
from lightning_llm.errors import UserError
from lightning_llm.finetune.forget import prepared_with
from lightning_llm.model.io import MANIFEST, read_manifest, tokenizer_hash
from lightning_llm.registry.store import STATE, Registry, now
from lightning_llm.training.datamodule import RandomWindows, TokenDataModule


@dataclass
class UpdateConfig:
    replay: float = 0.1  # share of the training windows drawn from the line's old training data
    max_forgetting: float = 0.05  # the old-domain loss may rise by at most this much (nats per token)
    min_improvement: float = 0.0  # the new-domain loss must fall by more than this much
    old_data: list[str] = field(default_factory=list)  # prepared folders of the old domain (default: the line's)
    lock_wait: float = 60.0  # seconds to wait for the registry's lock held by another writer
    remove: Any = None  # text to push the model away from: a prepared folder or a data config (finetune.forget)
    min_removal: float = 0.1  # with remove: the removed text's held-out loss must rise by at least this

    def __post_init__(self):
        if not 0 <= self.replay < 1:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if not self.min_removal > 0:  # also refuses NaN
            raise ValueError(f"min_removal must be more than 0 (the removed text's loss has to rise), "
                             f"got {self.min_removal}")
        if self.lock_wait < 0:
            raise ValueError(f"lock_wait must be at least 0, got {self.lock_wait}")
        if self.remove is not None and not isinstance(self.remove, (str, dict)):
            raise ValueError(f"remove must be a prepared-data folder or a data config ({{source: ..., ...}}), "
                             f"got {self.remove!r}")


class ReplayWindows(RandomWindows):
    """RandomWindows over two token arrays: each window from the old tokens with probability
    `share`, else from the new ones; seeded per batch the same way, so a resumed run sees the
    batches it would have."""

    def __init__(self, new: np.ndarray, old: np.ndarray, share: float, *, block_size: int, batch_size: int,
                 seed: int, rank: int = 0, start_batch: int = 0):
        super().__init__(new, block_size, batch_size, seed, rank, start_batch)
        self.new, self.old, self.share = new, old, share

    def windows(self, rng: np.random.Generator, offsets: np.ndarray) -> np.ndarray:
        from_old = rng.random(self.batch_size) < self.share
        windows = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
        for tokens, rows in ((self.new, ~from_old), (self.old, from_old)):
            starts = rng.integers(0, len(tokens) - self.block_size, size=int(rows.sum()))
            windows[rows] = tokens[starts[:, None] + offsets]
        return windows


class ReplayDataModule(TokenDataModule):
    """The new data's datamodule (its validation unchanged) training on the replay mixture."""

    def __init__(self, new: TokenDataModule, old: list[PreparedData], share: float):
        super().__init__(new.data, block_size=new.block_size, batch_size=new.batch_size, seed=new.seed,
                         val_windows=new.val_windows, eval_batch_size=new.eval_batch_size)
        self.old_tokens = np.concatenate([np.asarray(d.tokens("train")) for d in old])
        self.share = share

    def train_dataloader(self):
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        rank = self.trainer.global_rank if self.trainer else 0
        stream = ReplayWindows(np.asarray(self.data.tokens("train")), self.old_tokens, self.share,
                               block_size=self.block_size, batch_size=self.batch_size, seed=self.seed, rank=rank,
                               start_batch=start)
        return DataLoader(stream, batch_size=None)


def old_domain(registry: Registry, version: str, *, cache_root: Path, tokenizer_json: str,
               explicit: list[str]) -> list[PreparedData]:
    """The prepared folders of what the version's line was trained on, tokenized as it is: the
    ones given (update.old_data), else the registry's data fingerprints found in the data cache.
    The first is the old domain the gate scores; all of them are replayed."""
    wanted = tokenizer_hash(tokenizer_json)
    if explicit:
        return [prepared_with(path, tokenizer_json=tokenizer_json, key="update.old_data",
                              owner=f"{registry.name} {version}") for path in explicit]
    hashes = registry.manifest(version).get("registry", {}).get("data", [])
    found = [PreparedData(cache_root / h) for h in dict.fromkeys(hashes)
             if (cache_root / h / "meta.json").is_file()
             and tokenizer_hash((cache_root / h / "tokenizer.json").read_text()) == wanted]
    if not found:
        raise UserError(f"registry {registry.name} {version}: none of its training data "
                        f"({', '.join(hashes) or 'none recorded'}) is prepared under {cache_root} with its "
                        "tokenizer: pass update.old_data=[<prepared folder>] (the old domain to replay and score)")
    return found


@dataclass
class Verdict:
    passed: bool
    reason: str  # one line: why it passed or not
    new_before: float
    new_after: float
    old_before: float
    old_after: float
    new_change: float
    old_change: float
    max_forgetting: float
    min_improvement: float
    removed: dict | None = None  # update.remove: the removed text's {before, after, change} (held out)
    min_removal: float | None = None

    def as_dict(self) -> dict:
        removal = {} if self.removed is None else {"removed": self.removed, "min_removal": self.min_removal}
        return {"passed": self.passed, "reason": self.reason,
                "new_domain": {"before": round(self.new_before, 4), "after": round(self.new_after, 4),
                               "change": self.new_change},
                "old_domain": {"before": round(self.old_before, 4), "after": round(self.old_after, 4),
                               "change": self.old_change},
                "max_forgetting": self.max_forgetting, "min_improvement": self.min_improvement, **removal}


def gate(losses: list[dict], settings: UpdateConfig) -> Verdict:
    """The verdict on finetune's before/after losses (run.json's finetune.losses: new, base and,
    with update.remove, forget). With remove, data= is kept rather than learned: its loss may rise
    by max_forgetting, as the old domain's, and the removed text's must rise by min_removal."""
    new, old = (next(r for r in losses if r["domain"] == d) for d in ("new", "base"))
    removed = next((r for r in losses if r["domain"] == "forget"), None) if settings.remove is not None else None
    if settings.remove is not None and removed is None:
        raise UserError("update.remove is set but the run scored no removed text (no forget row in its losses)")
    improved, forgot = -new["change"], old["change"]  # as finetune's table shows them
    failures = []
    if removed is not None:
        if not removed["change"] >= settings.min_removal:
            failures.append(f"removed-text loss {removed['before']:.4f} -> {removed['after']:.4f} "
                            f"({removed['change']:+.4f}) did not rise by update.min_removal={settings.min_removal}")
        if not -improved <= settings.max_forgetting:  # `not <=`: a NaN loss fails
            failures.append(f"kept (data=) loss {new['before']:.4f} -> {new['after']:.4f} ({-improved:+.4f}) "
                            f"worsened by more than update.max_forgetting={settings.max_forgetting}")
    elif not improved > settings.min_improvement:
        failures.append(f"new-domain loss {new['before']:.4f} -> {new['after']:.4f} did not fall by more than "
                        f"update.min_improvement={settings.min_improvement}")
    if not forgot <= settings.max_forgetting:
        failures.append(f"old-domain loss {old['before']:.4f} -> {old['after']:.4f} ({forgot:+.4f}) worsened by "
                        f"more than update.max_forgetting={settings.max_forgetting}")
    if failures:
        reason = "; ".join(failures)
    elif removed is not None:
        reason = (f"removed-text loss {removed['before']:.4f} -> {removed['after']:.4f} ({removed['change']:+.4f}, at "
                  f"least {settings.min_removal}), kept (data=) loss {new['before']:.4f} -> {new['after']:.4f} "
                  f"({-improved:+.4f}), old-domain loss {old['before']:.4f} -> {old['after']:.4f} ({forgot:+.4f}), "
                  f"both within {settings.max_forgetting}")
    else:
        reason = (f"new-domain loss {new['before']:.4f} -> {new['after']:.4f} ({-improved:+.4f}), old-domain loss "
                  f"{old['before']:.4f} -> {old['after']:.4f} ({forgot:+.4f}, within {settings.max_forgetting})")
    removal = {} if removed is None else {
        "removed": {k: removed[k] for k in ("data", "before", "after", "change")}, "min_removal": settings.min_removal}
    return Verdict(not failures, reason, new["before"], new["after"], old["before"], old["after"], new["change"],
                   old["change"], settings.max_forgetting, settings.min_improvement, **removal)


def register(registry: Registry, *, model: Path, parent: str, verdict: Verdict, record: dict,
             lock_wait: float = 60.0) -> tuple[str, bool, str]:
    """Add the updated model as the registry's next version and make it live if the gate passed
    and `parent` is still live, all under the registry's lock. The version's manifest gets
    `update` (record, the verdict, whether it was promoted and why). Returns (version, promoted,
    why)."""
    # another promotion or update holds the lock for a moment: wait for it, not fail
    with registry._lock(wait=lock_wait):
        state = registry.state()
        promoted, why = verdict.passed, verdict.reason
        if promoted and state["live"] != parent:
            promoted, why = False, (f"the live version changed from {parent} to {state['live']} during the update "
                                    f"(another promotion came first); gate: {verdict.reason}")
        manifest = read_manifest(model)
        manifest["update"] = {**record, "parent_version": parent, "gate": verdict.as_dict(), "promoted": promoted,
                              "why": why}
        write_json(model / MANIFEST, manifest)  # the run's own model folder: what the registry copies
        version = registry._add(model, parent)
        event = "promote" if promoted else "refused"
        state["events"].append({"event": event, "version": version, "from": state["live"], "at": now(),
                                "reason": f"update: {why}"})
        if promoted:
            state["live"] = version
        write_json(registry.dir / STATE, state)
    return version, promoted, why


def losses_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "run.json").read_text())["finetune"]["losses"]
