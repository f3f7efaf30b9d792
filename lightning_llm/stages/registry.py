"""llm registry list|show|promote|rollback|status: the versions of a model, which one is live, and
(status) how the loss of the prompts a server answers compares with the live version's eval loss."""

from __future__ import annotations

import json
import math

from omegaconf import DictConfig, OmegaConf

from lightning_llm.artifacts import markdown_table
from lightning_llm.errors import UserError
from lightning_llm.registry import Registry, list_registries
from lightning_llm.stages.common import stage

ACTIONS = ("list", "show", "promote", "rollback", "status")
MAX_METRICS_BYTES = 16 * 1024 * 1024  # a /metrics page larger than this is not one of ours


def registry_of(cfg: DictConfig) -> Registry:
    if not cfg.name:
        raise UserError(f"llm registry {cfg.action} needs name=<registry>")
    registry = Registry(cfg.paths.output_root, str(cfg.name))
    if cfg.action != "promote" and not registry.exists():
        known = ", ".join(r.name for r in list_registries(cfg.paths.output_root)) or "none yet"
        raise UserError(f"no registry {cfg.name!r} under {registry.dir.parent} (registries: {known})")
    return registry


def versions_table(registry: Registry) -> str:
    live, rows = registry.live, []
    for version in registry.versions():
        manifest = registry.manifest(version)
        info = manifest.get("registry", {})
        loss = (registry.eval_loss(version) or (None, None))[1]
        rows.append([version + (" (live)" if version == live else ""), info.get("parent_version") or "-",
                     manifest.get("produced_by", "?"), manifest.get("data_hash") or "-",
                     "-" if loss is None else f"{loss:.4f}", info.get("added", "?")])
    return markdown_table(["version", "parent", "produced by", "data", "val loss", "added"], rows)


def events_table(registry: Registry) -> str:
    return markdown_table(["when", "event", "version", "was live", "reason"],
                          [[e["at"], e["event"], e["version"], e["from"] or "-", e["reason"] or "-"]
                           for e in registry.state()["events"]])


def number(cfg: DictConfig, key: str, kind: type, *, least: float, what: str) -> float | int:
    """cfg's `key` (a dotted path) as a `kind` of at least `least`, or a one-line error."""
    value = OmegaConf.select(cfg, key)
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r}: give {what}") from None
    if not (number >= least and math.isfinite(number)):
        raise UserError(f"{key}={value!r}: give {what}")
    return number


def scrape(url: str, timeout: float) -> list:
    """The metric families of a server's /metrics (url: where it serves, http://host:port)."""
    import logging

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per request is not part of the report
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise UserError(f"url={url}: not a URL ({err})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UserError(f"url={url}: give the server's address, e.g. url=http://127.0.0.1:8000")
    metrics = parsed.copy_with(path=parsed.path.rstrip("/") + "/metrics", query=None, fragment=None)
    body = bytearray()
    try:  # this one address and nothing else: no proxy from the environment, no redirect followed
        with httpx.stream("GET", metrics, timeout=timeout, trust_env=False, follow_redirects=False) as answer:
            if answer.status_code != 200:
                raise UserError(f"{metrics} answered {answer.status_code}, not metrics: is this an `llm serve` "
                                "server?")
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise UserError(f"{metrics} sent more than {MAX_METRICS_BYTES:,} bytes: not an `llm serve` "
                                    "metrics page")
    except httpx.HTTPError as err:
        raise UserError(f"cannot reach the server at {url} ({type(err).__name__}: {str(err) or 'no answer'}); is "
                        "`llm serve` running there?") from None
    try:
        return list(text_string_to_metric_families(body.decode("utf-8", errors="replace")))
    except (ValueError, IndexError, TypeError) as err:
        raise UserError(f"{metrics} is not a Prometheus metrics page ({type(err).__name__}: {err})") from None


def served(families: list, registry: str) -> tuple[dict[str, dict], str | None]:
    """Per version of the registry the server answered with: its summed prompt NLL (nats), scored
    tokens and prompts; and the version the server serves now (None: not this registry)."""
    by_version: dict[str, dict] = {}
    now = None
    wanted = {"llm_prompt_loss_nats_total": "nats", "llm_prompt_loss_tokens_total": "tokens",
              "llm_prompt_loss_count": "prompts"}
    for family in families:
        for sample in family.samples:
            if sample.labels.get("registry") != registry:
                continue
            version = sample.labels.get("version", "")
            if sample.name in wanted:
                row = by_version.setdefault(version, {"nats": 0.0, "tokens": 0.0, "prompts": 0.0})
                row[wanted[sample.name]] += sample.value
            elif sample.name == "llm_live_version" and sample.value >= 1:
                now = version
    return by_version, now


def status_text(cfg: DictConfig, registry: Registry) -> str:
    """The live version's eval loss beside the loss of the prompts a server scored, and a verdict."""
    url = str(cfg.url)
    threshold = number(cfg, "drift.threshold", float, least=-math.inf, what="a number of nats")
    least = number(cfg, "drift.min_tokens", int, least=0, what="a whole number of tokens, at least 0")
    timeout = number(cfg, "timeout", float, least=1e-3, what="a positive number of seconds")
    by_version, now = served(scrape(url, timeout), registry.name)
    if now is None and not by_version:
        raise UserError(f"the server at {url} serves no version of registry {registry.name!r} "
                        f"(start it with `llm serve registry={registry.name}`)")
    live = registry.live
    rows, gaps = [], {}
    for version in sorted({*by_version, *([live] if live else [])}, key=lambda v: int(v[1:]) if v[1:].isdigit() else 0):
        row = by_version.get(version, {"nats": 0.0, "tokens": 0.0, "prompts": 0.0})
        known = registry.eval_loss(version) if version in registry.versions() else None
        mean = row["nats"] / row["tokens"] if row["tokens"] else None
        gap = None if mean is None or known is None else mean - known[1]
        gaps[version] = (gap, row["tokens"], known)
        marks = [m for m, on in (("live", version == live), ("served", version == now)) if on]
        rows.append([version + (f" ({', '.join(marks)})" if marks else ""),
                     "-" if known is None else f"{known[1]:.4f}", "-" if mean is None else f"{mean:.4f}",
                     f"{row['tokens']:,.0f}", f"{row['prompts']:,.0f}", "-" if gap is None else f"{gap:+.4f}"])
    table = markdown_table(["version", "eval loss", "served prompts' loss", "tokens", "prompts", "gap"], rows)
    gap, tokens, known = gaps.get(live, (None, 0, None))
    if live is None:
        verdict = f"registry {registry.name} has no live version"
    elif known is None:
        verdict = f"{live} recorded no eval loss (its run's val loss): nothing to compare the served loss with"
    elif tokens < least:
        verdict = (f"too early to tell: {tokens:,.0f} prompt tokens of {live} scored so far "
                   f"(drift.min_tokens={least})")
    elif gap > threshold:
        verdict = f"drift: served prompts' loss is {gap:.2f} nats above eval: an update is due"
    else:
        verdict = (f"no drift: served prompts' loss is {gap:+.2f} nats from eval (drift.threshold={threshold:g})")
    if now is not None and now != live:
        verdict += f"; the server still serves {now} (it switches to {live} once loaded)"
    return (f"registry {registry.name}, server {url} (losses in nats per token; the served loss is the mean over "
            f"the prompts the server scored since it started)\n\n{table}\n\n{verdict}")


@stage("registry")
def main(cfg: DictConfig) -> str:
    if cfg.action not in ACTIONS:
        raise UserError(f"action must be one of {', '.join(ACTIONS)}, got {cfg.action!r}")
    if cfg.action == "list" and not cfg.name:
        registries = list_registries(cfg.paths.output_root)
        text = markdown_table(["registry", "live", "versions", "last event"],
                              [[r.name, r.live or "-", len(r.versions()),
                                (lambda e: f"{e['event']} {e['version']} at {e['at']}")(r.state()["events"][-1])
                                if r.state()["events"] else "-"] for r in registries]) \
            if registries else f"no registries under {cfg.paths.output_root}/registry"
    else:
        registry = registry_of(cfg)
        if cfg.action == "list":
            text = versions_table(registry)
        elif cfg.action == "show":
            version = str(cfg.version) if cfg.version else registry.live_path().name
            text = (f"registry {registry.name}, {version}" + (" (live)" if version == registry.live else "") + "\n\n"
                    + json.dumps(registry.manifest(version), indent=2) + "\n\n" + events_table(registry))
        elif cfg.action == "status":
            text = status_text(cfg, registry)
        elif cfg.action == "promote":
            before = registry.live
            version = registry.promote(source=cfg.source, version=str(cfg.version) if cfg.version else None,
                                       reason=str(cfg.reason), expect_live=cfg.expect_live)
            text = f"registry {registry.name}: {version} is live (was {before or 'none'}): {registry.path(version)}"
        else:
            before = registry.live
            version = registry.rollback(reason=str(cfg.reason), expect_live=cfg.expect_live)
            text = f"registry {registry.name}: rolled back to {version} (was {before}): {registry.path(version)}"
    print(text)
    return text
