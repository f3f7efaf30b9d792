"""`evaluate(config)`: every evaluation task on one trained model, written to <run dir>/eval/.

Plain Python over the run's artifacts (a checkpoint or model folder, and the prepared-data
folder its run.json names): no Hydra, no Lightning. The tasks are

  lm          loss, perplexity, token accuracy and bits per byte on val and test (95% intervals over windows)
  ngram       a Kneser-Ney n-gram model fitted on train, scored on the same tokens
  generation  continue K held-out test passages; BLEU, ROUGE-L and distinct-n, the n-gram too
  classify    fine-tune a genre classifier from the pretrained weights and from a random init
  samples     samples.md: fixed prompts at several temperatures, for reading
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lightning_llm.artifacts import Busy, exclusive, write_text
from lightning_llm.data.prepared import PreparedData
from lightning_llm.errors import UserError
from lightning_llm.evaluation import passages as P
from lightning_llm.evaluation.classify import pretrained_vs_random
from lightning_llm.evaluation.config import TASKS, EvalConfig
from lightning_llm.evaluation.generation import continuation_scores, decode, diversity, transformer_continuations
from lightning_llm.evaluation.lm import block_bytes, lm_metrics, score_tokens, utf8_bytes, window_intervals
from lightning_llm.evaluation.ngram import KneserNey
from lightning_llm.evaluation.report import write_outputs
from lightning_llm.evaluation.samples import samples_markdown
from lightning_llm.model.io import Artifact, load_artifact, resolve_checkpoint, run_dir_of

log = logging.getLogger("lightning_llm")


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
        self._block_bytes: dict[str, np.ndarray] = {}
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

    def intervals(self, split: str, nats: np.ndarray) -> dict:
        """95% bootstrap intervals of bpb and perplexity over windows of block_size targets."""
        tokens, n_bytes = self.split_tokens(split)
        block = self.model.config.block_size
        if split not in self._block_bytes:
            self._block_bytes[split] = block_bytes(self.tokenizer, tokens[1:], block)
        return window_intervals(nats, self._block_bytes[split], n_bytes, block, seed=self.config.seed)

    def lm(self) -> dict:
        out = {}
        for split in self.config.lm.splits:
            tokens, n_bytes = self.split_tokens(split)
            nats, correct = score_tokens(self.model, tokens, self.config.lm.stride, self.config.batch_size,
                                         self.config.device, desc=f"lm {split}")
            out[split] = lm_metrics(nats, n_bytes, correct) | self.intervals(split, nats)
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
            nats = ngram.nats(tokens)
            out[split] = lm_metrics(nats, n_bytes) | self.intervals(split, nats)
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
                **{name: continuation_scores(texts[name], references, seed=seed) for name in texts},
                "reference": diversity(references), "examples": examples}

    def classify(self) -> dict:
        return pretrained_vs_random(self.model, self.documents, self.data, self.config.classify, seed=self.config.seed,
                                    device=self.config.device, out_dir=self.out_dir)

    def samples(self) -> dict:
        s = self.config.samples
        # The n-gram baseline joins the pack when this evaluation fitted it (ngram or generation).
        text = samples_markdown(self.model, self.tokenizer, list(s.prompts), list(s.temperatures), s.new_tokens,
                                s.top_k, self.config.seed, self.config.device, self._ngram)
        write_text(self.out_dir / "samples.md", text)
        return {"path": "samples.md", "prompts": len(s.prompts), "temperatures": list(s.temperatures)}


def evaluate(config: EvalConfig) -> dict:
    evaluation = Evaluation(config)
    try:
        with exclusive(evaluation.out_dir):
            return evaluation.run()
    except Busy as busy:
        raise UserError(f"{busy}: wait for that llm eval to finish, or pass out_dir=<another folder>") from None
