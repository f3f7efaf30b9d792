"""`evaluate(config)`: every evaluation task on one trained model, written to <run dir>/eval/.

Plain Python over the run's artifacts (a checkpoint or model folder, and the prepared-data
folder its run.json names): no Hydra, no Lightning. The tasks are

  lm          loss, perplexity, token accuracy and bits per byte on val and test
  ngram       a Kneser-Ney n-gram model fitted on train, scored on the same tokens
  generation  continue K held-out test passages; BLEU, ROUGE-L and distinct-n, the n-gram too
  classify    fine-tune a genre classifier from the pretrained weights and from a random init
  samples     samples.md: fixed prompts at several temperatures, for reading
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lightning_llm.data import PreparedData
from lightning_llm.errors import UserError
from lightning_llm.evaluation import passages as P
from lightning_llm.evaluation.classify import (SequenceClassifier, classification_metrics, confusion_matrix,
                                               fine_tune, plot_confusions, predict)
from lightning_llm.evaluation.generation import continuation_scores, decode, diversity, transformer_continuations
from lightning_llm.evaluation.lm import lm_metrics, score_tokens, utf8_bytes
from lightning_llm.evaluation.ngram import KneserNey
from lightning_llm.artifacts import write_text
from lightning_llm.evaluation.report import write_outputs
from lightning_llm.evaluation.samples import samples_markdown
from lightning_llm.model import GPT
from lightning_llm.model.io import Artifact, load_artifact, resolve_checkpoint, resolve_device, run_dir_of

log = logging.getLogger("lightning_llm")
TASKS = ("lm", "ngram", "generation", "classify", "samples")


@dataclass
class LMTask:
    splits: list[str]
    stride: int | None  # tokens between window starts; None: block_size (non-overlapping windows)
    max_tokens: int | None  # score only the first max_tokens of each split; None: all of it


@dataclass
class NgramTask:
    order: int


@dataclass
class GenerationTask:
    passages: int  # K passages of the test split
    prompt_tokens: int  # N tokens of prompt
    new_tokens: int  # M tokens generated and scored against the true continuation
    temperature: float
    top_k: int | None


@dataclass
class ClassifyTask:
    label: str  # the document metadata field to predict
    passage_tokens: int | None  # None: the model's block_size
    steps: int
    batch_size: int
    lr: float
    max_eval_passages: int | None  # per split, thinned evenly over its documents


@dataclass
class SamplesTask:
    prompts: list[str]
    temperatures: list[float]
    new_tokens: int
    top_k: int | None


@dataclass
class EvalConfig:
    ckpt: str
    data_dir: str | None  # None: the prepared-data folder named in the run's run.json
    out_dir: str | None  # None: <run dir>/eval
    tasks: list[str]
    seed: int
    device: str
    batch_size: int
    lm: LMTask
    ngram: NgramTask
    generation: GenerationTask
    classify: ClassifyTask
    samples: SamplesTask

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {', '.join(TASKS)}" if unknown
                             else f"tasks is empty; tasks are {', '.join(TASKS)}")
        positive = {"batch_size": self.batch_size, "ngram.order": self.ngram.order,
                    "generation.passages": self.generation.passages,
                    "generation.prompt_tokens": self.generation.prompt_tokens,
                    "generation.new_tokens": self.generation.new_tokens, "classify.steps": self.classify.steps,
                    "classify.batch_size": self.classify.batch_size, "samples.new_tokens": self.samples.new_tokens,
                    **({"lm.stride": self.lm.stride} if self.lm.stride is not None else {})}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.device = resolve_device(self.device)


@dataclass
class Target:
    """What is evaluated and where: the checkpoint, its run dir (if any), data and output folders."""

    artifact: Artifact
    checkpoint: Path
    run_dir: Path | None
    data_dir: Path
    out_dir: Path


def locate(config: EvalConfig) -> Target:
    """Resolve ckpt= and refuse, in one line, an artifact that lacks a tokenizer or a data reference."""
    checkpoint = resolve_checkpoint(config.ckpt)
    if checkpoint.is_dir() and not (checkpoint / "tokenizer.json").exists():
        raise UserError(f"ckpt={checkpoint} has no tokenizer.json: evaluate a run dir or the model/ folder of a run")
    artifact = load_artifact(checkpoint, device=config.device)  # a checkpoint without a tokenizer fails here
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    run_dir = run_dir_of(checkpoint)
    data_dir = config.data_dir
    if data_dir is None:
        if run_dir is None:
            raise UserError(f"ckpt={config.ckpt} has no data reference (no run.json beside it): "
                            "pass data_dir=<the prepared-data folder it was trained on>")
        data_dir = json.loads((run_dir / "run.json").read_text())["data"]["dir"]
    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").exists():
        raise UserError(f"the prepared data {data_dir} is not there: run `llm prepare` with the run's data and "
                        "tokenizer config, or pass data_dir=<prepared-data folder>")
    out_dir = Path(config.out_dir) if config.out_dir else (run_dir or folder) / "eval"
    return Target(artifact, checkpoint, run_dir, data_dir, out_dir)


class Evaluation:
    """One model, its data and config; one method per task, each returning its results."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.target = locate(config)
        self.model, self.tokenizer = self.target.artifact.model, self.target.artifact.tokenizer
        self.data = PreparedData(self.target.data_dir)
        self.meta = self.data.meta
        if Tokenizer.from_file(str(self.data.tokenizer_path)).to_str() != self.tokenizer.to_str():
            raise UserError(f"the model's tokenizer is not the one of {self.target.data_dir}: "
                            "pass data_dir=<the prepared-data folder the model was trained on>")
        self.documents = P.read_documents(self.target.data_dir) \
            if {"generation", "classify"} & set(config.tasks) else []
        self._ngram: KneserNey | None = None  # fitted on first use: by ngram, generation or samples
        self._ngram_fit: dict = {}
        self._lm_tokens: dict[str, tuple[np.ndarray, int]] = {}
        self.out_dir = self.target.out_dir

    def check_inputs(self) -> np.ndarray | None:
        """Refuse impossible requests before any long work; returns the generation passages."""
        for split in self.config.lm.splits:
            if split not in self.meta["splits"] or self.meta["splits"][split]["tokens"] < 2:
                raise UserError(f"lm.splits: the prepared data has no {split!r} split to score "
                                f"(splits: {', '.join(self.meta['splits'])})")
        label = self.config.classify.label
        unlabelled = [d.id for d in self.documents if label not in d.meta] if "classify" in self.config.tasks else []
        if unlabelled:
            raise UserError(f"classify.label={label!r}: documents such as {unlabelled[0]!r} have no such "
                            "metadata field")
        if "generation" not in self.config.tasks:
            return None
        g = self.config.generation
        return P.continuation_passages(self.documents, self.data.tokens("test"), "test", g.passages,
                                       g.prompt_tokens, g.new_tokens, self.config.seed)

    def run(self) -> dict:
        started = time.time()
        passages = self.check_inputs()
        results = {"ckpt": str(self.target.checkpoint), "run_dir": str(self.target.run_dir or ""),
                   "data_dir": str(self.target.data_dir), "tokenizer": self.meta.get("tokenizer"),
                   "model": {**self.model.config.to_dict(), "parameters": self.model.num_params()},
                   "config": asdict(self.config), "seconds": {}}
        tasks = {"lm": self.lm, "ngram": self.ngram, "generation": lambda: self.generation(passages),
                 "classify": self.classify, "samples": self.samples}
        for name in TASKS:
            if name in self.config.tasks:
                log.info("eval: %s", name)
                task_started = time.time()
                results[name] = tasks[name]()
                results["seconds"][name] = round(time.time() - task_started, 1)
        results["seconds"]["total"] = round(time.time() - started, 1)
        # run.json's eval entry follows <run dir>/eval, the report `llm compare` reads; an
        # evaluation written elsewhere (out_dir=...) leaves the run's record alone.
        write_outputs(results, self.out_dir, self.target.run_dir if self.config.out_dir is None else None)
        return results

    def split_tokens(self, split: str) -> tuple[np.ndarray, int]:
        """The scored stream of a split and the UTF-8 bytes of its targets (all but the first token)."""
        if split not in self._lm_tokens:
            tokens = np.asarray(self.data.tokens(split)[:self.config.lm.max_tokens], dtype=np.int64)
            self._lm_tokens[split] = tokens, utf8_bytes(self.tokenizer, tokens[1:])
        return self._lm_tokens[split]

    def lm(self) -> dict:
        out = {}
        for split in self.config.lm.splits:
            tokens, n_bytes = self.split_tokens(split)
            nats, correct = score_tokens(self.model, tokens, self.config.lm.stride, self.config.batch_size,
                                         self.config.device, desc=f"lm {split}")
            out[split] = lm_metrics(nats, n_bytes, correct)
        block_size = self.model.config.block_size
        return {"stride": min(self.config.lm.stride or block_size, block_size), "splits": out}

    def fitted_ngram(self) -> KneserNey:
        if self._ngram is None:
            started = time.time()
            train = np.asarray(self.data.tokens("train"), dtype=np.int64)
            self._ngram = KneserNey(self.config.ngram.order, self.meta["vocab_size"]).fit(train)
            self._ngram_fit = {"order": self.config.ngram.order, "train_tokens": int(len(train)),
                               "ngrams": self._ngram.n_ngrams, "fit_seconds": round(time.time() - started, 1)}
        return self._ngram

    def ngram(self) -> dict:
        ngram = self.fitted_ngram()
        out = {}
        for split in self.config.lm.splits:
            tokens, n_bytes = self.split_tokens(split)
            out[split] = lm_metrics(ngram.nats(tokens), n_bytes)
        return {**self._ngram_fit, "splits": out}

    def generation(self, passages: np.ndarray) -> dict:
        g, seed = self.config.generation, self.config.seed
        prompts, truth = passages[:, :g.prompt_tokens], passages[:, g.prompt_tokens:]
        ngram = self.fitted_ngram()
        systems = {
            "transformer": transformer_continuations(self.model, prompts, g.new_tokens, g.temperature, g.top_k, seed,
                                                     self.config.device),
            "ngram": ngram.generate(prompts, g.new_tokens, g.temperature, g.top_k,
                                    np.random.default_rng(seed))[:, g.prompt_tokens:],
        }
        references = decode(self.tokenizer, truth)
        texts = {name: decode(self.tokenizer, ids) for name, ids in systems.items()}
        examples = [{"prompt": p, "reference": r, **{name: texts[name][i] for name in texts}}
                    for i, (p, r) in enumerate(zip(decode(self.tokenizer, prompts[:3]), references))]
        return {"passages": g.passages, "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens,
                "temperature": g.temperature, "top_k": g.top_k, "ngram_order": ngram.order,
                **{name: continuation_scores(texts[name], references) for name in texts},
                "reference": diversity(references), "examples": examples}

    def classify(self) -> dict:
        c, label = self.config.classify, self.config.classify.label
        length = min(c.passage_tokens or self.model.config.block_size, self.model.config.block_size)
        classes = sorted({d.meta[label] for d in self.documents})
        splits = [s for s in ("val", "test") if any(d.split == s for d in self.documents)]
        evaluated = {s: P.labelled_passages(self.documents, self.data.tokens(s), s, label, classes, length,
                                            c.max_eval_passages) for s in splits}
        train_works = {name: sorted({d.meta.get("work", d.id) for d in self.documents
                                     if d.split == "train" and d.meta[label] == name}) for name in classes}
        data = {"train": {"works": train_works}}
        data |= {s: {"works": p.works_by_class, "passages": p.counts(classes)} for s, p in evaluated.items()}
        results = {"label": label, "classes": classes, "passage_tokens": length, "steps": c.steps,
                   "batch_size": c.batch_size, "lr": c.lr, "data": data}
        starts = {"pretrained": lambda: copy.deepcopy(self.model), "scratch": lambda: GPT(self.model.config)}
        matrices: dict[str, dict[str, np.ndarray]] = {s: {} for s in splits}
        for init, make_body in starts.items():
            torch.manual_seed(self.config.seed)  # a seeded random init for the control
            body = make_body()
            torch.manual_seed(self.config.seed)  # and the same head init for both
            classifier = SequenceClassifier(body, len(classes))
            batches = P.BalancedWindows(self.documents, self.data.tokens("train"), "train", label, classes, length,
                                        self.config.seed)
            losses = fine_tune(classifier, batches, c.steps, c.batch_size, c.lr, self.config.device,
                               desc=f"classify ({init})")
            results[init] = {"train_loss_last_10": float(np.mean(losses[-10:]))}
            for split, data in evaluated.items():
                preds = predict(classifier, data.windows, c.batch_size, self.config.device)
                matrices[split][init] = confusion_matrix(data.labels, preds, len(classes))
                results[init][split] = classification_metrics(matrices[split][init], classes)
        names = {"pretrained": "pretrained", "scratch": "random init"}
        for split in splits:
            plot_confusions({f"{names[init]} ({results[init][split]['macro']['f1']:.2f} macro F1)": m
                             for init, m in matrices[split].items()},
                            classes, f"{label} on {split}: pretrained vs random init",
                            self.out_dir / f"confusion_{split}.png")
        results["plots"] = {split: f"confusion_{split}.png" for split in splits}
        return results

    def samples(self) -> dict:
        s = self.config.samples
        # The n-gram baseline joins the pack when this evaluation fitted it (ngram or generation).
        text = samples_markdown(self.model, self.tokenizer, list(s.prompts), list(s.temperatures), s.new_tokens,
                                s.top_k, self.config.seed, self.config.device, self._ngram)
        write_text(self.out_dir / "samples.md", text)
        return {"path": "samples.md", "prompts": len(s.prompts), "temperatures": list(s.temperatures)}


def evaluate(config: EvalConfig) -> dict:
    return Evaluation(config).run()
