"""llm compress: quantize or prune a trained model; write the smaller model folder and a report
that measures it against the original side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lightning_llm.artifacts import write_json
from lightning_llm.config import check_targets
from lightning_llm.data.prepared import PreparedData
from lightning_llm.errors import UserError
from lightning_llm.model import GPT
from lightning_llm.model.io import (
    WEIGHTS,
    Artifact,
    first_line,
    load_artifact,
    new_manifest,
    resolve_device,
    run_dir_of,
    save_artifact,
)
from lightning_llm.stages.common import log, stage

METHODS = ("quantize", "prune")


def whole(value, least: int) -> bool:
    """A whole number (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_config(cfg: DictConfig) -> None:
    """Every setting checked before anything is read or written; device=auto becomes the device it means."""
    from lightning_llm.compress import GOALS, IMPORTANCE, KINDS, check_scheme

    try:
        cfg.device = str(torch.device(resolve_device(str(cfg.device))))
    except ValueError as err:  # CUDA asked for, none visible
        raise UserError(str(err)) from None
    except RuntimeError as err:  # not a device torch knows
        raise UserError(f"device={cfg.device}: {first_line(err)}") from None
    if cfg.method not in METHODS:
        raise UserError(f"method={cfg.method!r}: methods are {', '.join(METHODS)} (llm distill trains a student)")
    if cfg.method == "quantize":
        q = cfg.quantize
        if q.goal is not None and q.goal not in GOALS:
            raise UserError(f"quantize.goal={q.goal!r}: goals are {', '.join(GOALS)}, or null to name a scheme")
        if q.goal is None:
            check_scheme(str(q.scheme), cfg.device)
        if isinstance(q.max_bpb_increase, bool) or not (isinstance(q.max_bpb_increase, (int, float))
                                                        and q.max_bpb_increase >= 0):
            raise UserError(f"quantize.max_bpb_increase must be a number of at least 0, got {q.max_bpb_increase!r}")
    else:
        p = cfg.prune
        if p.kind not in KINDS:
            raise UserError(f"prune.kind={p.kind!r}: kinds are {', '.join(KINDS)}")
        if p.count is None and (isinstance(p.amount, bool) or not (isinstance(p.amount, (int, float))
                                                                   and 0 < p.amount < 1)):
            raise UserError(f"prune.amount={p.amount!r} must be in (0, 1): the share to remove")
        if p.count is not None and (p.kind == "magnitude" or not whole(p.count, 1)):
            raise UserError(f"prune.count={p.count!r}: a whole number of at least 1 heads or channels per layer "
                            "(prune.kind=heads or mlp); magnitude pruning takes prune.amount")
        if p.importance not in IMPORTANCE:
            raise UserError(f"prune.importance={p.importance!r}: one of {', '.join(IMPORTANCE)}")
        if not whole(p.recover_steps, 0):
            raise UserError(f"prune.recover_steps must be a whole number of at least 0, got {p.recover_steps!r}")
        if p.kind != "magnitude" and p.importance == "taylor" and not whole(p.importance_batches, 1):
            raise UserError(f"prune.importance_batches must be a whole number of at least 1, got "
                            f"{p.importance_batches!r}")
        for key in ("batch_size", "val_windows"):  # taylor importance and recovery draw training windows
            if not whole(cfg[key], 1):
                raise UserError(f"{key} must be a whole number of at least 1, got {cfg[key]!r}")
        check_targets(cfg, "config")
    m = cfg.measure
    if not (m.max_tokens is None or whole(m.max_tokens, 2)) or not whole(m.new_tokens, 1) \
            or not whole(m.repeats, 1) or not OmegaConf.is_list(m.batch_sizes) \
            or not all(whole(b, 1) for b in m.batch_sizes):
        raise UserError("measure: max_tokens (null or at least 2), new_tokens, repeats and batch_sizes (a list) must "
                        "be whole numbers of at least 1")


def find_data(cfg: DictConfig, artifact: Artifact) -> PreparedData | None:
    """The prepared data the model was trained on (data_dir=, else its run's run.json), checked
    against the model's tokenizer; None when neither names one."""
    data_dir = cfg.data_dir
    if data_dir is None:
        run_dir = run_dir_of(artifact.path)
        if run_dir is None:
            return None
        data_dir = json.loads((run_dir / "run.json").read_text()).get("data", {}).get("dir")
        if data_dir is None:
            return None
    data = PreparedData(Path(data_dir))
    if not (data.dir / "meta.json").exists():
        raise UserError(f"the prepared data {data.dir} is not there: run `llm prepare` with the run's data and "
                        "tokenizer config, or pass data_dir=<prepared-data folder>")
    if Tokenizer.from_file(str(data.tokenizer_path)).to_str() != artifact.tokenizer.to_str():
        raise UserError(f"the model's tokenizer is not the one of {data.dir}: pass data_dir=<the prepared-data "
                        "folder the model was trained on>")
    return data


def recover(cfg: DictConfig, model: GPT, data: PreparedData, tokenizer_json: str, *,
            hold_zeros: bool) -> tuple[GPT, dict]:
    """A short fine-tune of the pruned model through the Lightning loop of `llm train` (its
    LightningModule, DataModule, optimizer and schedule from config); magnitude-pruned weights stay zero."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lightning_llm.compress.prune import hold_zeros as hold
    from lightning_llm.compress.prune import release_zeros
    from lightning_llm.stages.train import resolve_precision
    from lightning_llm.training.datamodule import TokenDataModule
    from lightning_llm.training.module import LanguageModel

    module = LanguageModel(model.config.to_dict(), tokenizer_json, optimizer=instantiate(cfg.optim.optimizer),
                           scheduler=instantiate(cfg.optim.scheduler),
                           bytes_per_token=data.meta["splits"]["val"]["bytes_per_token"])
    module.model.load_state_dict(model.state_dict())
    if hold_zeros:
        hold(module.model)
    datamodule = TokenDataModule(data, block_size=model.config.block_size, batch_size=cfg.batch_size, seed=cfg.seed,
                                 val_windows=cfg.val_windows)
    precision = resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator))
    trainer = instantiate(cfg.trainer, precision=precision, callbacks=[TQDMProgressBar(refresh_rate=10)],
                          logger=[instantiate(lg) for lg in cfg.logger.values()], enable_checkpointing=False)
    started = time.time()
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    release_zeros(module.model)
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
    info = {"steps": trainer.global_step, "seconds": round(time.time() - started, 1), "precision": precision,
            "metrics": metrics}
    return module.model.to(cfg.device).eval(), info  # on the device the other models are measured on


def original_file(artifact: Artifact) -> Path | None:
    """The safetensors folder holding the original's weights: the folder itself, or its run's model/;
    None where there is no such file (a LoRA adapter folder holds only the adapter's weights)."""
    if artifact.path.is_dir():
        return artifact.path if (artifact.path / WEIGHTS).exists() else None
    run_dir = run_dir_of(artifact.path)
    return run_dir / "model" if run_dir is not None and (run_dir / "model" / WEIGHTS).exists() else None


def quantize_model(cfg: DictConfig, artifact: Artifact, data: PreparedData | None) -> tuple[GPT, dict, dict, list]:
    from lightning_llm.artifacts import markdown_table
    from lightning_llm.compress import pick_scheme, quantize
    from lightning_llm.compress.quantize import manifest_entry

    q = cfg.quantize
    scheme, picked, details = str(q.scheme), None, []
    if q.goal is not None:
        scheme, picked = pick_scheme(artifact.model, q.goal, device=cfg.device, tokenizer=artifact.tokenizer,
                                     data=data, max_bpb_increase=q.max_bpb_increase,
                                     max_tokens=cfg.measure.max_tokens, new_tokens=cfg.measure.new_tokens,
                                     repeats=cfg.measure.repeats, group_size=q.group_size)
        table = markdown_table(["scheme", "tokens/s, batch 1", "weights (MB)", "val bpb", "eligible"],
                               [[n, r["tokens_per_s_b1"], f"{r['weight_bytes'] / 1e6:.3f}",
                                 f"{r['val_bpb']:.4f}" if "val_bpb" in r else "not measured (no data)",
                                 "–" if n == "original" else str(r.get("eligible", True)).lower()]
                                for n, r in picked.items()])
        print(f"quantize.goal={q.goal}: measured on this machine (batch-1 greedy generation of "
              f"{cfg.measure.new_tokens} tokens, best of {cfg.measure.repeats}):\n{table}\nchosen: {scheme}")
        details.append(f"goal `{q.goal}`: chose **{scheme}** from the measurements below")
    model = quantize(artifact.model, scheme, device=cfg.device, group_size=q.group_size)
    section = {"method": "quantize", "scheme": scheme, "goal": q.goal, "measured": picked}
    details.append(f"scheme `{scheme}` (torchao {manifest_entry(scheme, model).get('torchao', 'not used')}); "
                   "embeddings and norms stay in float")
    return model, section, {"quantization": manifest_entry(scheme, model, group_size=q.group_size)}, details


def prune_model(cfg: DictConfig, artifact: Artifact, data: PreparedData | None) -> tuple[GPT, dict, GPT | None, list]:
    from lightning_llm.compress import importance, magnitude, removed_count, structured
    from lightning_llm.compress.prune import sample_batches, sparsity

    p, model = cfg.prune, artifact.model.float()
    needs_data = p.recover_steps > 0 or (p.kind != "magnitude" and p.importance == "taylor")
    if needs_data and data is None:
        raise UserError(f"ckpt={cfg.ckpt} has no data reference (no run.json beside it), which "
                        f"{'recovery' if p.recover_steps else 'taylor importance'} needs: pass data_dir=<the "
                        "prepared-data folder it was trained on>")
    section: dict = {"method": "prune", "kind": p.kind}
    if p.kind == "magnitude":
        pruned = magnitude(model, float(p.amount))
        section.update(amount=float(p.amount), sparsity=round(sparsity(pruned), 4))
        details = [f"magnitude: {sparsity(pruned):.1%} of the blocks' linear weights set to zero (global L1); "
                   "the matrices keep their size, so dense kernels run no faster and the file is no smaller"]
    else:
        remove = removed_count(p.kind, model.config, amount=p.amount, count=p.count)
        batches = None
        if p.importance == "taylor":
            batches = sample_batches(data.tokens("train"), block_size=model.config.block_size,
                                     batch_size=cfg.batch_size, count=p.importance_batches, seed=cfg.seed)
        scores = importance(model, p.kind, method=p.importance, batches=batches)
        pruned, kept = structured(model, p.kind, scores, remove)
        what = "heads" if p.kind == "heads" else "MLP channels"
        before = model.config.n_head if p.kind == "heads" else model.config.mlp_hidden
        section.update(removed_per_layer=remove, kept=kept, importance=p.importance,
                       config_before=model.config.to_dict())
        details = [f"{p.kind}: removed {remove} of {before} {what} in each of the {model.config.n_layer} layers "
                   f"by {p.importance} importance" + (f" ({p.importance_batches} batches of {cfg.batch_size} "
                                                      "training windows)" if batches else "")]
    unrecovered = None
    if p.recover_steps:
        unrecovered = pruned
        pruned, recovery = recover(cfg, pruned, data, artifact.tokenizer.to_str(), hold_zeros=p.kind == "magnitude")
        section["recovery"] = recovery
        details.append(f"recovery: {recovery['steps']} steps of fine-tuning on the training data in "
                       f"{recovery['seconds']} s ({recovery['precision']}, batch {cfg.batch_size}, "
                       f"lr {cfg.optim.optimizer.lr}); val/loss after: {recovery['metrics'].get('val/loss')}")
    return pruned, section, unrecovered, details


def compress(cfg: DictConfig) -> dict:
    """Check, load, compress, save, load back, measure against the original, report."""
    check_config(cfg)
    artifact = load_artifact(cfg.ckpt, device=cfg.device)
    if artifact.manifest.get("quantization"):
        raise UserError(f"ckpt={cfg.ckpt} is already quantized ({artifact.manifest['quantization'].get('scheme')}): "
                        f"compress its parent, {artifact.manifest.get('parent')}")
    data = find_data(cfg, artifact)
    run_dir = Path(cfg.paths.run_dir)
    torch.manual_seed(cfg.seed)
    unrecovered, extra = None, {}
    if cfg.method == "quantize":
        compressed, section, extra, details = quantize_model(cfg, artifact, data)
    else:
        compressed, section, unrecovered, details = prune_model(cfg, artifact, data)
    manifest = new_manifest(produced_by="compress", tokenizer_json=artifact.tokenizer.to_str(),
                            parent=str(artifact.path), data_hash=data.dir.name if data else
                            artifact.manifest.get("data_hash"), compress=section, **extra,
                            **{key: artifact.manifest[key] for key in ("template", "chat_template")  # the parent's
                               if key in artifact.manifest})
    save_artifact(compressed, artifact.tokenizer.to_str(), run_dir / "model", manifest=manifest)
    saved = load_artifact(run_dir / "model", device=cfg.device)  # what eval, generate and serve will read
    models = {"original": artifact.model.float() if cfg.method == "prune" else artifact.model}
    if unrecovered is not None:
        models["pruned, not recovered"] = unrecovered
    models[section.get("scheme") or f"pruned ({section['kind']})"] = saved.model
    name = list(models)[-1]
    m = cfg.measure
    log.info("measuring %s side by side (generation speed, then bits per byte)", ", ".join(models))
    rows = measure_all(models, artifact=artifact, data=data, cfg=cfg, folders={"original": original_file(artifact),
                                                                              name: run_dir / "model"})
    if data is None:
        details.append("bits per byte not measured: no prepared data (pass data_dir=)")
    else:
        details.append(f"bits per byte on the first {m.max_tokens or 'all'} tokens of val and test of {data.dir}")
    details.append(f"speed: greedy generation of {m.new_tokens} tokens, best of {m.repeats} interleaved rounds, "
                   f"{torch.get_num_threads()} threads; parent {artifact.path}")
    from lightning_llm.compress.report import comparison_table, write_report

    record = {"compress": section, "parent": str(artifact.path), "model_dir": str(run_dir / "model")}
    write_report(run_dir / "compress", title=f"llm compress: {section['method']} ({name})", details=details,
                 rows=rows, record=record)
    if data is not None:
        write_json(run_dir / "run.json", {
            "experiment": cfg.experiment_name, "run_dir": str(run_dir), "produced_by": "compress",
            "parent": str(artifact.path), "data": {"dir": str(data.dir), "hash": data.dir.name},
            "model": {**saved.config.to_dict(), "parameters": rows[name]["parameters"]},
            "steps": (section.get("recovery") or {}).get("steps", 0), "compress": section,
            "metrics": rows[name], "overrides": OmegaConf.to_container(cfg, resolve=True)})
    print(comparison_table(rows))
    print(f"wrote {run_dir / 'model'} (load it as ckpt=) and {run_dir / 'compress' / 'report.md'}")
    return rows


def measure_all(models: dict[str, GPT], *, artifact: Artifact, data: PreparedData | None, cfg: DictConfig,
                folders: dict[str, Path | None]) -> dict[str, dict]:
    from lightning_llm.compress import measure

    m = cfg.measure
    return measure(models, tokenizer=artifact.tokenizer, data=data, folders=folders, max_tokens=m.max_tokens,
                   batch_sizes=tuple(m.batch_sizes), new_tokens=m.new_tokens, repeats=m.repeats, device=cfg.device)


main = stage("compress")(compress)
