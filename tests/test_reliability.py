"""What an adversarial user tried and must not get: code run from a checkpoint or from config,
files written outside the output root, two runs in one dir, a corrupt or mismatched checkpoint
trusted, a traceback for a mistake. docs/reliability.md lists every case and its test."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import LLM, TINY, llm, llm_env

from lightning_llm.errors import UserError
from lightning_llm.evaluation.compare import compare


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, cache_root, prepared):
    """An output root sharing the session's data, with one finished tiny run of experiment `rel`."""
    outputs = tmp_path_factory.mktemp("outputs")
    (outputs / "data").symlink_to(cache_root)
    first = outputs / "train" / "rel" / "first"
    llm(["train", *TINY, "experiment_name=rel", f"hydra.run.dir={first}"], outputs)
    return outputs, first


def one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


class RunsCode:
    """Unpickling this creates a folder: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.makedirs, (str(self.marker),)


# ---- security ------------------------------------------------------------------------------

def test_a_crafted_checkpoint_never_runs_even_when_the_environment_forces_pickle(experiment, tmp_path):
    outputs, first = experiment
    state = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    state["callbacks"] = {"evil": RunsCode(marker)}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(state, crafted)
    result = llm(["train", *TINY, "experiment_name=rel", f"ckpt_path={crafted}", "trainer.max_steps=40",
                  f"hydra.run.dir={tmp_path / 'run'}"], outputs, check=False,
                 env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert "is not a lightning-llm checkpoint" in one_error_line(result)
    assert not marker.exists()


@pytest.mark.parametrize("override", ["optim.optimizer._target_=torch.load",
                                      "+callbacks.evil._target_=os.system",
                                      "+callbacks.evil._target_=lightning.pytorch.callbacks._private"])
def test_config_can_build_only_allowed_targets(override, cache_root, prepared, tmp_path):
    result = llm(["train", *TINY, override, f"hydra.run.dir={tmp_path / 'run'}"], cache_root.parent, check=False)
    assert "is not something config may build" in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_a_name_that_is_a_path_is_refused_and_nothing_is_written_outside(tmp_path):
    outputs = tmp_path / "outputs"
    for name in ("../../escaped", "a/b", ".."):
        result = llm(["train", f"experiment_name={name}"], outputs, check=False)
        assert "experiment_name=" in one_error_line(result) and "folder name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["outputs"])
    assert not list(tmp_path.parent.glob("escaped*"))


def test_two_runs_started_at_once_get_their_own_run_dirs(experiment):
    """The run dir carries the process id: two runs started in the same second never share one."""
    outputs, _ = experiment
    procs = [subprocess.Popen(LLM + ["prepare"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=llm_env(outputs)) for _ in range(2)]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    run_dirs = list((outputs / "prepare").glob("*/*"))
    assert len(run_dirs) == 2 and all((d / "prepare.log").exists() for d in run_dirs)


# ---- no corrupt or mismatched checkpoint is trusted -------------------------------------------

def test_resume_auto_skips_a_truncated_last_checkpoint_and_says_so(experiment, tmp_path):
    outputs, first = experiment
    broken = outputs / "train" / "rel" / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    data = (first / "checkpoints" / "last.ckpt").read_bytes()
    (broken / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])
    run_dir = tmp_path / "resumed"
    result = llm(["train", *TINY, "experiment_name=rel", "resume=auto", "trainer.max_steps=32",
                  f"hydra.run.dir={run_dir}"], outputs)
    log = result.stdout + result.stderr
    assert re.search(r"skipped .*broken/checkpoints/last.ckpt: unreadable", log)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["resumed_from"].startswith(str(first)) and record["steps"] == 32


def test_ckpt_path_to_a_truncated_or_random_file_is_one_line(experiment, tmp_path):
    outputs, first = experiment
    truncated, random_bytes = tmp_path / "truncated.ckpt", tmp_path / "random.ckpt"
    data = (first / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[:1000])
    random_bytes.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    for path in (truncated, random_bytes):
        result = llm(["train", *TINY, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"], outputs, check=False)
        assert f"ckpt_path={path} is not a lightning-llm checkpoint" in one_error_line(result)


def test_resume_with_another_tokenizer_of_the_same_size_is_refused(experiment, tmp_path):
    outputs, first = experiment
    state = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tokenizer = json.loads(state["tokenizer_json"])
    vocab = tokenizer["model"]["vocab"]
    a, b = "a", "b"  # swap two ids: same size, other meaning
    vocab[a], vocab[b] = vocab[b], vocab[a]
    state["tokenizer_json"] = json.dumps(tokenizer)
    other = tmp_path / "other_tokenizer.ckpt"
    torch.save(state, other)
    result = llm(["train", *TINY, f"ckpt_path={other}", "trainer.max_steps=40", f"hydra.run.dir={tmp_path / 'r'}"],
                 outputs, check=False)
    assert "another tokenizer" in one_error_line(result)


def test_resume_auto_passes_over_checkpoints_of_another_model_config(experiment, tmp_path):
    outputs, _ = experiment
    run_dir = tmp_path / "wider"
    result = llm(["train", *TINY, "experiment_name=rel", "resume=auto", "model.n_layer=1", "trainer.max_steps=4",
                  "trainer.val_check_interval=2", f"hydra.run.dir={run_dir}"], outputs)
    log = result.stdout + result.stderr
    assert re.search(r"skipped .*last.ckpt: it was trained with another model config \(n_layer", log)
    assert json.loads((run_dir / "run.json").read_text())["resumed_from"] is None


def test_resume_auto_prefers_the_run_dir_it_is_told_to_run_in(experiment, tmp_path):
    outputs, first = experiment
    own = tmp_path / "own"
    llm(["train", *TINY, "experiment_name=elsewhere", "trainer.max_steps=15", f"hydra.run.dir={own}"], outputs)
    for path in (own / "checkpoints").iterdir():
        os.utime(path, (0, 0))  # older than every checkpoint of `rel`
    # `rel` has newer checkpoints of the same shape elsewhere; the run dir's own last.ckpt wins
    result = llm(["train", *TINY, "experiment_name=rel", "resume=auto", "trainer.max_steps=20",
                  f"hydra.run.dir={own}"], outputs)
    assert f"resuming from {own}/checkpoints/last.ckpt (step 15)" in result.stdout + result.stderr


def test_resume_auto_on_a_finished_run_says_there_is_nothing_to_do(experiment, tmp_path):
    outputs, first = experiment
    before = sorted((outputs / "train" / "rel").iterdir())
    result = llm(["train", *TINY, "experiment_name=rel", "resume=auto"], outputs)
    assert result.returncode == 0 and "nothing to do" in result.stdout and "trainer.max_steps=30" in result.stdout
    assert sorted((outputs / "train" / "rel").iterdir()) == before  # no empty run dir


# ---- one line, never a traceback -----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "optim.optimizer.lr=-1"], "optim.optimizer: Invalid learning rate: -1"),
    (["train", "trainer.val_check_interval=0"], "trainer.val_check_interval must be"),
    (["train", "model.mlp_ratio=0"], "mlp_ratio must give an MLP at least one unit wide"),
    (["train", "model.n_embd=-64", "model.n_head=1"], "n_embd must be positive"),
    (["generate", "ckpt=/no/such", "temperature=nan"], "temperature must be a finite number"),
    (["generate", "ckpt=/no/such", "temperature=inf"], "temperature must be a finite number"),
])
def test_more_mistakes_are_one_line_and_leave_no_run_dir(args, message, cache_root, prepared, tmp_path):
    run_dir = tmp_path / "refused"
    result = llm([*args, f"hydra.run.dir={run_dir}"], cache_root.parent, check=False)
    assert message in one_error_line(result)
    assert not run_dir.exists()


@pytest.mark.parametrize("content", ["", '{"headline": {"val/bpb": 2.', "[1, 2]"])
def test_compare_refuses_a_broken_metrics_file_in_one_line(content, tmp_path):
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "metrics.json").write_text(content)
    with pytest.raises(UserError, match=r"metrics.json (is empty, truncated or unreadable|does not hold a JSON)"):
        compare([str(tmp_path / "run")], tmp_path / "compare.md")


# ---- concurrent writers and silent cuts ----------------------------------------------------

def test_an_eval_of_a_run_that_another_eval_is_writing_is_refused_and_writes_nothing(experiment):
    from lightning_llm.artifacts import exclusive

    outputs, first = experiment
    eval_dir = first / "eval"
    run_json = (first / "run.json").read_text()
    with exclusive(eval_dir):  # stands for an `llm eval` still writing this run's report
        result = llm(["eval", f"ckpt={first}", "tasks=[lm]", "lm.max_tokens=256"], outputs, check=False)
    line = one_error_line(result)
    assert f"another process (pid {os.getpid()}) is writing {eval_dir}" in line and "out_dir=" in line
    assert not (eval_dir / "metrics.json").exists() and (first / "run.json").read_text() == run_json
    # the lock went with its holder: the next eval runs and records itself
    llm(["eval", f"ckpt={first}", "tasks=[lm]", "lm.max_tokens=256"], outputs)
    assert (eval_dir / "metrics.json").exists() and "eval" in json.loads((first / "run.json").read_text())


def test_a_prompt_longer_than_the_context_is_said_in_one_line(experiment):
    outputs, first = experiment
    block_size = json.loads((first / "model" / "config.json").read_text())["block_size"]
    result = llm(["generate", f"ckpt={first}", "prompt=" + "a" * (block_size + 40), "max_new_tokens=3"], outputs)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:") and "dtype" not in line]
    assert len(notes) == 1 and f"more than the model's context (block_size {block_size})" in notes[0], result.stderr
    short = llm(["generate", f"ckpt={first}", "prompt=a", "max_new_tokens=3"], outputs)
    assert "context" not in short.stderr
    # the one other note says which weights' dtype the default (auto) chose, and why
    assert [line for line in short.stderr.splitlines() if line.startswith("note:")] == \
        [line for line in result.stderr.splitlines() if line.startswith("note: dtype auto: ")]


def test_a_model_folder_and_its_files_follow_the_umask(tmp_path):
    """safetensors writes its files 0600; a model folder is shared like every other output."""
    from tokenizers import Tokenizer, models

    from lightning_llm.model.gpt import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact

    tokenizer_json = Tokenizer(models.WordLevel({"a": 0, "<|unk|>": 1}, unk_token="<|unk|>")).to_str()
    model = GPT(GPTConfig(block_size=8, n_layer=1, n_head=1, n_embd=8, vocab_size=2))
    old = os.umask(0o022)
    try:
        out = save_artifact(model, tokenizer_json, tmp_path / "model",
                            manifest=new_manifest(produced_by="test", tokenizer_json=tokenizer_json))
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == \
        {p.name: "0o644" for p in out.iterdir()}
