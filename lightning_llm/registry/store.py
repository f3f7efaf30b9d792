"""The registry's files and the only code that changes them.

Every change happens under the registry's lock (artifacts.exclusive: a second writer fails at once,
naming the holder) and lands by renames: a new version is copied into a staged folder and renamed to
`versions/v<k>`; `registry.json` is written to a temporary file and renamed (artifacts.write_json). A
crash leaves either the old state or the new one, and two promotions at once never both become live:
the second is refused while the first holds the lock, and whatever it saw as live is checked again
under the lock (`expect_live`).

`registry.json`:  {"name", "live": "v2" | null, "events": [{"event": "promote" | "rollback",
"version", "from", "at", "reason"}, ...]}
A version's manifest gains `registry`: {"name", "version", "parent_version" (live when it was added),
"source" (the artifact it was copied from), "data" (the data hashes of its line: its parent's and its
own), "eval" (its run's final metrics, when known), "added"}; promotions are the events of registry.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lightning_llm.artifacts import Busy, exclusive, staged_folder, write_json
from lightning_llm.config import check_name
from lightning_llm.errors import UserError
from lightning_llm.model.io import MANIFEST, read_manifest, resolve_checkpoint, run_dir_of

_VERSION = re.compile(r"v([1-9][0-9]*)")
STATE = "registry.json"
EVAL_LOSS_KEYS = ("best_val/loss", "val/loss")  # a version's eval loss, first found (run.json metrics)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def list_registries(root: Path) -> list[Registry]:
    folder = Path(root) / "registry"
    return [Registry(root, p.name) for p in sorted(folder.iterdir()) if (p / STATE).is_file()] \
        if folder.is_dir() else []


class Registry:
    def __init__(self, root: str | Path, name: str):
        self.name = check_name(name, "name")
        self.dir = Path(root) / "registry" / name

    # --- reading ----------------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.dir / STATE).is_file()

    def state(self) -> dict:
        if not self.exists():
            return {"name": self.name, "live": None, "events": []}
        return json.loads((self.dir / STATE).read_text())

    @property
    def live(self) -> str | None:
        return self.state()["live"]

    def versions(self) -> list[str]:
        found = [p.name for p in (self.dir / "versions").iterdir() if _VERSION.fullmatch(p.name)] \
            if (self.dir / "versions").is_dir() else []
        return sorted(found, key=lambda v: int(v[1:]))

    def path(self, version: str) -> Path:
        if not _VERSION.fullmatch(str(version)) or not (self.dir / "versions" / version / MANIFEST).is_file():
            known = ", ".join(self.versions()) or "none yet"
            raise UserError(f"registry {self.name!r} has no version {version!r} (versions: {known})")
        return self.dir / "versions" / version

    def live_path(self) -> Path:
        live = self.live
        if live is None:
            raise UserError(f"registry {self.name!r} has no live version: `llm registry promote name={self.name} "
                            "source=<model folder or run dir>`")
        return self.path(live)

    def manifest(self, version: str) -> dict:
        return read_manifest(self.path(version))

    def eval_loss(self, version: str) -> tuple[str, float] | None:
        """The version's eval loss (nats per token) as its run recorded it: (metric, value), the
        best validation loss where there is one; None when its run recorded none."""
        metrics = self.manifest(version).get("registry", {}).get("eval") or {}
        for key in EVAL_LOSS_KEYS:
            if isinstance(metrics.get(key), (int, float)):
                return key, float(metrics[key])
        return None

    # --- changing ---------------------------------------------------------------------------------

    def promote(self, *, source: str | Path | None = None, version: str | None = None, reason: str = "",
                expect_live: str | None = None) -> str:
        """Make a version live: an existing one (version=), or a new one copied from an artifact
        (source=, a model folder or a finished run dir). Returns the version now live."""
        if (source is None) == (version is None):
            raise UserError("promote needs either source=<model folder or run dir> (a new version) or "
                            "version=v<k> (an existing one)")
        folder = None
        if source is not None:
            given = Path(source)
            # a finished run dir is versioned by its model/ folder, not its training checkpoint
            folder = given / "model" if (given / "model" / MANIFEST).is_file() else resolve_checkpoint(source)
            if not folder.is_dir():
                raise UserError(f"source={source} is a checkpoint file: promote a model folder or a finished run dir "
                                "(its model/ folder is what gets versioned)")
            read_manifest(folder)  # refuses a folder of another format or a newer version, in one line
        with self._lock():
            state = self.state()
            self._check_expected(state, expect_live)
            if folder is not None:
                version = self._add(folder, state["live"])
            else:
                self.path(version)
                if version == state["live"]:
                    raise UserError(f"{version} is already the live version of registry {self.name!r}")
            state["events"].append({"event": "promote", "version": version, "from": state["live"], "at": now(),
                                    "reason": reason})
            state["live"] = version
            write_json(self.dir / STATE, state)
        return version

    def rollback(self, *, reason: str = "", expect_live: str | None = None) -> str:
        """Make live again the version that was live before the live one was promoted."""
        with self._lock():
            state = self.state()
            self._check_expected(state, expect_live)
            current = state["live"]
            promoted = [e for e in state["events"] if e["event"] == "promote" and e["version"] == current]
            previous = promoted[-1]["from"] if promoted else None
            if previous is None:
                raise UserError(f"registry {self.name!r}: nothing to roll back to ({current or 'no version'} is live "
                                "and no version was live before it)")
            self.path(previous)
            state["events"].append({"event": "rollback", "version": previous, "from": current, "at": now(),
                                    "reason": reason})
            state["live"] = previous
            write_json(self.dir / STATE, state)
        return previous

    @contextmanager
    def _lock(self, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the registry's lock (artifacts.exclusive) for the block; another writer's lock is
        waited for up to `wait` seconds, then refused as one UserError (nothing changed)."""
        deadline = time.monotonic() + wait
        with ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(exclusive(self.dir))
                    break
                except Busy as err:
                    if time.monotonic() >= deadline:
                        raise UserError(f"registry {self.name!r}: {err}; try again when it is done (nothing "
                                        "changed)") from None
                    time.sleep(0.5)
                except OSError as err:
                    raise UserError(f"registry {self.name!r}: cannot write {self.dir} ({err.strerror})") from None
            yield

    def _check_expected(self, state: dict, expect_live: str | None) -> None:
        if expect_live is not None and state["live"] != expect_live:
            raise UserError(f"registry {self.name!r}: the live version is {state['live']}, not {expect_live} as "
                            "expected: another promotion came first; nothing changed")

    def _add(self, folder: Path, parent_version: str | None) -> str:
        """Copy the artifact in as the next version; its manifest gains the registry section."""
        numbers = [int(v[1:]) for v in self.versions()]
        version = f"v{max(numbers, default=0) + 1}"
        manifest = read_manifest(folder)
        parent_data = []
        if parent_version is not None:
            parent_data = self.manifest(parent_version).get("registry", {}).get("data", [])
        run_dir = run_dir_of(folder)
        metrics = json.loads((run_dir / "run.json").read_text()).get("metrics") if run_dir else None
        manifest["registry"] = {"name": self.name, "version": version, "parent_version": parent_version,
                                "source": str(folder.resolve()), "added": now(),
                                "data": parent_data + ([manifest["data_hash"]] if manifest.get("data_hash") else []),
                                "eval": metrics}
        with staged_folder(self.dir / "versions" / version) as staging:
            for item in folder.iterdir():
                if item.is_file() and not item.name.startswith("."):
                    shutil.copy2(item, staging / item.name)
            write_json(staging / MANIFEST, manifest)
        return version

