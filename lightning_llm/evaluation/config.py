"""What `llm eval` is told: the model, the data, the tasks and each task's settings (conf/eval.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_llm.model.io import resolve_device

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
