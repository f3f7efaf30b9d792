"""llm finetune: continue a trained model on new data (full or LoRA, text or instruction), with its
tokenizer fixed, and report the new domain's and the base domain's loss before and after; with
finetune.forget=<data>, also push it away from that text (lightning_llm/finetune/forget.py) and
report the forget text's loss too."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from lightning_llm.artifacts import write_json
from lightning_llm.config import to_dataclass
from lightning_llm.data import DataConfig, PreparedData, TokenizerConfig, prepare
from lightning_llm.data.sources import source_files
from lightning_llm.data.tokenizer import EOT, UNK
from lightning_llm.errors import UserError
from lightning_llm.finetune.config import FinetuneConfig
from lightning_llm.finetune.forget import ForgetDataModule, ForgetModel, prepared_with
from lightning_llm.finetune.forgetting import DomainLoss, mean_loss, report
from lightning_llm.model import GPTConfig
from lightning_llm.model.io import (
    Artifact,
    load_artifact,
    read_checkpoint,
    read_manifest,
    run_dir_of,
    save_adapter_artifact,
    tokenizer_hash,
)
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.prepare import data_config
from lightning_llm.stages.train import Run, check_run_config, make_trainer, record
from lightning_llm.training.datamodule import FixedWindows, TokenDataModule
from lightning_llm.training.module import LanguageModel


def load_base(cfg: DictConfig) -> Artifact:
    if not cfg.base:
        raise UserError("base is required: pass base=<training run dir, model folder or .ckpt>")
    if not Path(str(cfg.base)).exists():
        raise UserError(f"base={cfg.base} does not exist: pass a training run dir, a model folder or a .ckpt")
    return load_artifact(str(cfg.base))


def base_domain(base: Artifact, settings: FinetuneConfig, cache_root: Path) -> PreparedData | None:
    """The prepared folder of the base model's own data (finetune.base_data, else the one its run
    or manifest names), tokenized with the base's tokenizer; None (with a warning) when unknown."""
    if settings.base_data:
        return prepared_with(settings.base_data, tokenizer_json=base.tokenizer_json, key="finetune.base_data",
                             owner="the base model")
    candidates = []
    run_dir = run_dir_of(base.path)
    if run_dir is not None:
        data_dir = json.loads((run_dir / "run.json").read_text()).get("data", {}).get("dir")
        candidates += [Path(data_dir)] if data_dir else []
    if base.manifest.get("data_hash"):
        candidates.append(cache_root / str(base.manifest["data_hash"]))
    for folder in candidates:
        if not (folder / "meta.json").is_file():
            continue
        data = PreparedData(folder)
        if tokenizer_hash(data.tokenizer_path.read_text()) == tokenizer_hash(base.tokenizer_json):
            return data
    log.warning("base domain: no prepared data of the base model found (tried %s): the forgetting rows stay empty; "
                "pass finetune.base_data=<prepared folder>", ", ".join(map(str, candidates)) or "nothing recorded")
    return None


def warn_unknown(unknown: int, tokens: int, settings: FinetuneConfig, chars: list[str] | None = None,
                 bytes_per_token: tuple[float, float] | None = None) -> dict:
    """One warning line, before training, when the base tokenizer handles the new text badly."""
    rate = unknown / max(tokens, 1)
    problems = []
    if rate > settings.max_unknown_rate:
        shown = f" (most often {' '.join(repr(c) for c in chars[:5])})" if chars else ""
        problems.append(f"{rate:.2%} of its tokens are {UNK}{shown}, characters the base tokenizer never saw: "
                        "the model cannot read or write them")
    if bytes_per_token and bytes_per_token[0] < 0.5 * bytes_per_token[1]:
        problems.append(f"it takes {bytes_per_token[1] / bytes_per_token[0]:.1f}x the tokens per byte of the base "
                        f"domain ({bytes_per_token[0]:.2f} vs {bytes_per_token[1]:.2f} bytes per token)")
    if problems:
        log.warning("the base tokenizer handles the new data badly: %s (finetune.max_unknown_rate=%s)",
                    "; ".join(problems), settings.max_unknown_rate)
    return {"unknown_rate": round(rate, 6), "tokens": tokens, "unknown_chars": chars or []}


def window_batches(data: PreparedData, split: str, block_size: int, windows: int, batch_size: int) -> list:
    """The (x, y) batches of `windows` evenly spaced windows of a split, kept for scoring before and after."""
    return list(DataLoader(FixedWindows(data.tokens(split), block_size, windows), batch_size=batch_size))


def text_domain(cfg: DictConfig, base: Artifact, settings: FinetuneConfig, block_size: int, base_bpt: float | None):
    """The new text prepared with the base's tokenizer; its datamodule, held-out batches and data record."""
    data = prepare(data_config(cfg), TokenizerConfig(), cfg.paths.data_cache, tokenizer_json=base.tokenizer_json)
    meta = data.meta
    for split in ("train", "val"):
        if meta["splits"][split]["tokens"] <= block_size + 1:
            raise UserError(f"the new data's {split} split has {meta['splits'][split]['tokens']} tokens, no more than "
                            f"the base model's block_size {block_size} + 1: give more data")
    unk = base.tokenizer.token_to_id(UNK)
    tokens = np.concatenate([data.tokens("train"), data.tokens("val")])
    bpt = (meta["splits"]["train"]["bytes_per_token"], base_bpt) if base_bpt else None
    health = warn_unknown(int((tokens == unk).sum()) if unk is not None else 0, len(tokens), settings,
                          bytes_per_token=bpt)
    datamodule = TokenDataModule(data, block_size=block_size, batch_size=cfg.batch_size, seed=cfg.seed,
                                 val_windows=cfg.val_windows)
    held_out = window_batches(data, "val", block_size, settings.eval_windows, cfg.batch_size)
    record = {"dir": str(data.dir), "hash": data.dir.name, "format": "text", **meta, "tokenizer_health": health}
    return data, datamodule, held_out, record, meta["splits"]["val"]["bytes_per_token"]


def forget_domain(source, base: Artifact, *, block_size: int, cache_root: str, key: str) -> PreparedData:
    """The text to forget, tokenized as the base: a prepared-data folder (as update.old_data takes
    one) or a data config mapping (as data: holds one) prepared with the base's tokenizer. Its train
    split is what the model is pushed away from, its val split what is scored (held out)."""
    if isinstance(source, str):
        data = prepared_with(source, tokenizer_json=base.tokenizer_json, key=key, owner="the base model")
    else:
        config = to_dataclass(DataConfig, source, key)
        data = prepare(config, TokenizerConfig(), cache_root, tokenizer_json=base.tokenizer_json)
    for split in ("train", "val"):
        tokens = data.meta["splits"][split]["tokens"]
        if tokens <= block_size + 1:
            raise UserError(f"{key}: the text to forget ({data.dir.name}) has {tokens} tokens in its {split} split, "
                            f"no more than the model's block_size {block_size} + 1: give more of it")
    return data


def instruction_domain(cfg: DictConfig, base: Artifact, settings: FinetuneConfig, block_size: int):
    from lightning_llm.finetune import instruction
    from lightning_llm.serving.text import special_tokens
    from lightning_llm.templates import load_template, model_template

    source = data_config(cfg)
    if source.source not in ("jsonl", "text_files") or not source.paths:
        raise UserError("finetune.format=instruction reads JSONL files: pass data=jsonl 'data.paths=[records.jsonl]'")
    files = source_files(source)
    if not files:
        raise UserError(f"data.paths={source.paths}: no file there")
    conversations = instruction.read_conversations(files)
    template = load_template(settings.template) if settings.template else model_template(base.manifest)
    rendered = instruction.render(conversations, tokenizer=base.tokenizer, template=template,
                                  specials=special_tokens(base.tokenizer), block_size=block_size)
    health = warn_unknown(rendered.unknown, rendered.tokens, settings, chars=rendered.unknown_chars)
    if rendered.truncated or rendered.dropped:
        log.warning("instruction data: %d record(s) cut at block_size=%d tokens, %d left out (no response token "
                    "within it)", rendered.truncated, block_size, rendered.dropped)
    train, val = instruction.split_examples(rendered.examples, settings.val_fraction, cfg.seed)
    pad_id = base.tokenizer.token_to_id(EOT)
    datamodule = instruction.InstructionDataModule(train, val, batch_size=cfg.batch_size, seed=cfg.seed, pad_id=pad_id)
    held_out = list(instruction.eval_loader(val, cfg.batch_size, pad_id))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    digest.update(template.source.encode())
    digest.update(base.tokenizer_json.encode())
    log.info("instruction data: %d records (%d train, %d held out) from %d file(s), template %r, %d response tokens "
             "of %d", len(conversations), len(train), len(val), len(files), template.name,
             sum(int(e.trained[1:].sum()) for e in rendered.examples), sum(len(e.ids) for e in rendered.examples))
    record = {"dir": None, "hash": f"{source.name}-instruction-{digest.hexdigest()[:12]}", "format": "instruction",
              "files": [str(p) for p in files], "records": len(conversations), "train": len(train),
              "held_out": len(val), "template": template.name, "truncated": rendered.truncated,
              "dropped": rendered.dropped, "tokenizer_health": health}
    return None, datamodule, held_out, record, template


def record_exported_val_loss(run_dir: Path, metrics: dict, exported, datamodule, bytes_per_token: float) -> dict:
    """With forgetting the exported model is the last step's weights, not the best checkpoint's:
    run.json's metrics (what the registry reads as a version's eval loss) then hold val/loss (and
    val/ppl, val/bpb) of the exported weights on the validation windows, and no best_val/loss."""
    loss = mean_loss(exported, datamodule.val_dataloader(), next(exported.parameters()).device)
    metrics = {k: v for k, v in metrics.items() if k != "best_val/loss"} | {
        "val/loss": round(loss, 6), "val/ppl": round(math.exp(min(loss, 50.0)), 6),
        "val/bpb": round(loss / math.log(2) / bytes_per_token, 6)}
    run = json.loads((run_dir / "run.json").read_text())
    write_json(run_dir / "run.json", run | {"metrics": metrics})
    log.info("exported (last step's) weights: val/loss %.4f", loss)
    return metrics


def finetune(cfg: DictConfig, *, train_data=None, forget_key: str = "finetune.forget") -> dict:
    """Load the base, prepare the new data with its tokenizer, score both domains (and the text to
    forget), fit, score again, export and record. Returns the run's metrics. train_data(datamodule)
    may return the datamodule to train on instead (`llm update` mixes in replay of the base's own
    data); forget_key names finetune.forget in errors (`llm update` sets it from update.remove)."""
    settings = to_dataclass(FinetuneConfig, cfg.finetune, "finetune")
    if settings.forget is not None and settings.format != "text":
        raise UserError(f"{forget_key} works with text data: finetune.format=text")
    base = load_base(cfg)
    model_config = base.config
    with open_dict(cfg):
        cfg.model = {k: v for k, v in model_config.to_dict().items() if k != "vocab_size"}
    check_run_config(cfg)
    if settings.method == "lora":  # before any data is prepared
        from lightning_llm.finetune.lora import check_targets

        check_targets(base.model, settings.lora)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    old = base_domain(base, settings, Path(cfg.paths.data_cache))
    forget = None if settings.forget is None else forget_domain(
        settings.forget, base, block_size=model_config.block_size, cache_root=cfg.paths.data_cache, key=forget_key)
    old_bpt = old.meta["splits"]["val"]["bytes_per_token"] if old else None
    template = None
    if settings.format == "text":
        data, datamodule, new_batches, data_record, bytes_per_token = text_domain(cfg, base, settings,
                                                                                  model_config.block_size, old_bpt)
    else:
        data, datamodule, new_batches, data_record, template = instruction_domain(cfg, base, settings,
                                                                                   model_config.block_size)
        bytes_per_token = old_bpt or 1.0
    if train_data is not None:
        datamodule = train_data(datamodule)
    old_batches = window_batches(old, "val", model_config.block_size, settings.eval_windows, cfg.batch_size) \
        if old else []

    module_args = dict(optimizer=instantiate(cfg.optim.optimizer), scheduler=instantiate(cfg.optim.scheduler),
                       bytes_per_token=bytes_per_token)
    if forget is None:
        module = LanguageModel(model_config.to_dict(), base.tokenizer_json, **module_args)
    else:
        cap = settings.forget_cap or math.log(model_config.vocab_size)
        module = ForgetModel(model_config.to_dict(), base.tokenizer_json, method=settings.forget_method,
                             weight=settings.forget_weight, cap=cap, **module_args)
        datamodule = ForgetDataModule(datamodule, forget.tokens("train"), block_size=model_config.block_size,
                                      batch_size=cfg.batch_size, seed=cfg.seed)
    module.model.load_state_dict(base.model.state_dict())
    scored = [(DomainLoss("new", f"{data_record['hash']} (held out)", mean_loss(module.model, new_batches)),
               new_batches)]
    if old:
        scored.append((DomainLoss("base", f"{old.dir.name} val", mean_loss(module.model, old_batches)), old_batches))
    if forget is not None:
        forget_batches = window_batches(forget, "val", model_config.block_size, settings.eval_windows,
                                        cfg.batch_size)
        scored.append((DomainLoss("forget", f"{forget.dir.name} val", mean_loss(module.model, forget_batches)),
                       forget_batches))
    rows = [row for row, _ in scored]
    wrapped = None
    if settings.method == "lora":
        from lightning_llm.finetune.lora import add_lora

        wrapped = add_lora(module.model, settings.lora)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in base.model.parameters())
    log.info("base: %s (%.2fM parameters); fine-tune: %s, %s trainable parameters (%.2f%%); %s",
             base.path, total / 1e6, settings.method, f"{trainable:,}", 100 * trainable / total,
             ", ".join(f"{r.domain} domain loss {r.before:.4f}" for r in rows))
    if forget is not None:
        log.info("forgetting %s (%s tokens of its train split) by %s, weight %s%s", forget.dir.name,
                 f"{len(forget.tokens('train')):,}", settings.forget_method, settings.forget_weight,
                 f", per-token NLL capped at {module.forget_cap:.3f}" if settings.forget_method == "ascent" else "")

    trainer, loggers, precision = make_trainer(cfg, block_size=model_config.block_size, model_config=model_config)
    run = Run(trainer, module, datamodule, data, GPTConfig(**model_config.to_dict()), loggers, precision)
    started = time.time()
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    seconds = time.time() - started

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    if best and forget is None:  # the exported model and the "after" losses are the best validation's weights
        # (when forgetting, the last weights: the best retain loss is the step that forgot least)
        module.load_state_dict(read_checkpoint(best)["state_dict"])
    module.model.float()
    device = next(module.model.parameters()).device
    for row, batches in scored:
        row.after = mean_loss(module.model, batches, device)
    run_dir = Path(cfg.paths.run_dir)
    finetune_record = {"method": settings.method, "format": settings.format, "base": str(base.path),
                       "trainable_parameters": trainable, "parameters": total,
                       "seconds_per_step": round(seconds / max(trainer.global_step, 1), 4),
                       "losses": [r.as_dict() for r in rows]}
    if forget is not None:
        finetune_record["forget"] = {"data": forget.dir.name, "method": settings.forget_method,
                                     "weight": settings.forget_weight, "cap": round(module.forget_cap, 4)}
    manifest = {"produced_by": "finetune", "parent": str(base.path),
                "finetune": {k: v for k, v in finetune_record.items() if k != "losses"}}
    if template is None:  # a text fine-tune keeps the base's default chat template
        from lightning_llm.templates import model_template

        template = model_template(base.manifest)
    manifest |= {"template": template.name, "chat_template": template.source}
    exported = module.model
    if wrapped is not None:
        from lightning_llm.finetune.lora import merged_copy, save_adapter

        save_adapter(wrapped, run_dir / "adapter")
        manifest["finetune"]["lora"] = {"rank": settings.lora.rank, "alpha": settings.lora.alpha,
                                        "dropout": settings.lora.dropout,
                                        "target_modules": list(settings.lora.target_modules),
                                        "adapter": str(run_dir / "adapter")}
        exported = merged_copy(wrapped)
    scores = "new and base domain loss" if forget is None else "new, base domain and forget text loss"
    table = report(rows, run_dir, title=f"{settings.method} fine-tune of {base.path.name}: {scores}")
    if forget is not None:
        manifest["checkpoint"] = None  # the last step's weights: no checkpoint holds them
    metrics = record(cfg, run, ckpt_path=None, seconds=seconds, exported=exported, manifest_extra=manifest,
                     data_record=data_record, run_extra={"finetune": finetune_record})
    if forget is not None and trainer.is_global_zero:
        metrics = record_exported_val_loss(run_dir, metrics, exported, datamodule, bytes_per_token)
    if settings.export == "adapter":  # model/ becomes the adapter alone; load_artifact merges it into the base
        from lightning_llm.finetune.lora import write_adapter

        save_adapter_artifact(lambda folder: write_adapter(wrapped, folder), model_config, base.tokenizer_json,
                              run_dir / "model", manifest=read_manifest(run_dir / "model") | {"adapter": "peft-lora"})
    print(table)
    changes = "; ".join(f"{r.domain} domain {r.before:.4f} -> {r.after:.4f} ({r.change:+.4f})" for r in rows)
    log.info("fine-tuned (%s): %s; model %s", settings.method, changes, run_dir / "model")
    return metrics


main = stage("finetune")(finetune)
