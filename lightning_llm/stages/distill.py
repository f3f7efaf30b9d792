"""llm distill: train a student (any model preset or overrides) on a frozen teacher's softened
outputs and the data, through the run of `llm train`; report the student against the teacher."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lightning_llm.artifacts import write_json
from lightning_llm.errors import UserError
from lightning_llm.model import flops_per_token
from lightning_llm.model.io import (
    load_artifact,
    manifest_template,
    new_manifest,
    run_dir_of,
    save_artifact,
    tokenizer_hash,
)
from lightning_llm.stages.common import log, stage
from lightning_llm.stages.train import build, record
from lightning_llm.training.distill import DistillationModel


def check_same_data(cfg: DictConfig, teacher_path: Path) -> None:
    """Before any data is prepared: the student's data and tokenizer config are the teacher's run's."""
    run_dir = run_dir_of(teacher_path)
    if run_dir is None:
        return  # a bare model folder: the tokenizers are compared once the data is there
    composed = json.loads((run_dir / "run.json").read_text()).get("overrides") or {}
    for group in ("tokenizer", "data"):
        mine = OmegaConf.to_container(cfg[group], resolve=True)
        theirs = composed.get(group)
        if theirs is not None and mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise UserError(f"the student's {group} config differs from the teacher's ({', '.join(differ)}): "
                            f"a student learns the teacher's distribution over the teacher's tokens; use the "
                            f"teacher's {group} (as in {run_dir / 'run.json'})")


def distill(cfg: DictConfig) -> dict:
    """Check the teacher against the student's data, train the student with the distillation loss, record."""
    d = cfg.distill
    if not (isinstance(d.temperature, (int, float)) and d.temperature > 0):
        raise UserError(f"distill.temperature must be a number above 0, got {d.temperature!r}")
    if not (isinstance(d.alpha, (int, float)) and 0 <= d.alpha <= 1):
        raise UserError(f"distill.alpha must be in [0, 1] (the weight of the KL term), got {d.alpha!r}")
    teacher = load_artifact(cfg.teacher)
    check_same_data(cfg, teacher.path)
    run, ckpt_path = build(cfg)
    student = run.module
    student_tokenizer = Tokenizer.from_str(student.tokenizer_json).to_str()  # both serialised the same way
    if tokenizer_hash(student_tokenizer) != tokenizer_hash(teacher.tokenizer.to_str()) \
            or teacher.config.vocab_size != run.model_config.vocab_size:
        raise UserError(f"teacher={cfg.teacher} has another tokenizer (vocabulary {teacher.config.vocab_size}, "
                        f"{tokenizer_hash(teacher.tokenizer.to_str())}) than the student's data {run.data.dir} "
                        f"(vocabulary {run.model_config.vocab_size}, {tokenizer_hash(student_tokenizer)}): "
                        "distill on the teacher's data and tokenizer")
    if run.model_config.block_size > teacher.config.block_size:
        raise UserError(f"the student's block_size {run.model_config.block_size} is longer than the teacher's "
                        f"({teacher.config.block_size}): the teacher cannot score those windows")
    run = replace(run, module=DistillationModel(
        student.hparams.model_config, student.tokenizer_json, teacher=teacher.model, temperature=float(d.temperature),
        alpha=float(d.alpha), optimizer=student.optimizer_factory, scheduler=student.scheduler_factory,
        bytes_per_token=student.bytes_per_token))
    if cfg.compile:
        run.module.model.compile()
    log.info("distill: student %.2fM parameters from teacher %.2fM (%s), T=%s, alpha=%s",
             run.module.model.num_params() / 1e6, teacher.model.num_params() / 1e6, teacher.path, d.temperature,
             d.alpha)
    started = time.time()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = record(cfg, run, ckpt_path=ckpt_path, seconds=time.time() - started)
    if not run.trainer.is_global_zero:
        return metrics
    return write_outputs(cfg, teacher=teacher, run=run, metrics=metrics)


def write_outputs(cfg: DictConfig, *, teacher, run, metrics: dict) -> dict:
    """The model folder's manifest says it was distilled and from which teacher; run.json and
    compress/report.md hold the student against the teacher."""
    from lightning_llm.compress import measure
    from lightning_llm.compress.report import comparison_table, write_report
    from lightning_llm.stages.compress import original_file

    run_dir = Path(cfg.paths.run_dir)
    student = load_artifact(run_dir / "model")
    section = {"method": "distill", "teacher": str(teacher.path), "temperature": float(cfg.distill.temperature),
               "alpha": float(cfg.distill.alpha), "steps": run.trainer.global_step}
    template, chat_template = manifest_template(teacher.manifest)  # the teacher's, as llm compress keeps its parent's
    manifest = {**student.manifest, **new_manifest(produced_by="distill", tokenizer_json=run.module.tokenizer_json,
                                                   parent=str(teacher.path), data_hash=run.data.dir.name,
                                                   run_dir=str(run_dir), distill=section),
                "template": template, "chat_template": chat_template}
    save_artifact(student.model, run.module.tokenizer_json, run_dir / "model", manifest=manifest)
    m = cfg.measure
    teacher.model.cpu()  # fit moved it to the trainer's device; the student was loaded on the CPU
    rows = measure({"original": teacher.model, "student": student.model}, tokenizer=student.tokenizer, data=run.data,
                   folders={"original": original_file(teacher), "student": run_dir / "model"},
                   max_tokens=m.max_tokens, batch_sizes=tuple(m.batch_sizes), new_tokens=m.new_tokens,
                   repeats=m.repeats)
    details = [f"teacher {teacher.path} ({teacher.model.num_params() / 1e6:.2f}M parameters, "
               f"{flops_per_token(teacher.model) / 1e6:.1f} MFLOPs per token)",
               f"student: {run.trainer.global_step} steps, T={section['temperature']}, alpha={section['alpha']}; "
               f"best val/loss {metrics.get('best_val/loss')}",
               f"bits per byte on the first {m.max_tokens or 'all'} tokens of val and test of {run.data.dir}; "
               f"speed: greedy generation of {m.new_tokens} tokens, best of {m.repeats} interleaved rounds"]
    write_report(run_dir / "compress", title="llm distill: the student against its teacher (\"original\")",
                 details=details, rows=rows, record=section)
    record_path = run_dir / "run.json"
    write_json(record_path, {**json.loads(record_path.read_text()), "produced_by": "distill", "distill": section})
    print(comparison_table(rows))
    print(f"wrote {run_dir / 'model'} and {run_dir / 'compress' / 'report.md'}")
    return metrics


main = stage("distill")(distill)
