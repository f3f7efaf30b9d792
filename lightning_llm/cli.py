"""`llm <stage> [hydra overrides...]`: one Hydra app per stage, config in conf/<stage>.yaml."""

from __future__ import annotations

import importlib
import os
import sys

STAGES = {
    "prepare": "read, clean and split the corpus, train the tokenizer, write token shards",
    "train": "train a GPT with Lightning (prepares data first if needed)",
    "generate": "sample a continuation of a prompt from a trained model",
    "sweep": "search hyperparameters with Optuna: one training run per trial",
    "eval": "evaluate a trained model: perplexity, bits per byte, baselines, generation, classification",
    "compare": "one table of the headline metrics of several runs",
    "serve": "serve a trained model over an OpenAI-compatible HTTP API",
    "export": "write a trained model as a Hugging Face transformers folder (format=hf)",
    "import": "read a local Hugging Face transformers folder into a model folder",
}
MODULES = {"import": "hf_import"}  # a stage whose module is named otherwise (`import` is a Python keyword)

USAGE = "usage: llm <stage> [hydra overrides...]   (llm <stage> --help shows that stage's config)\n\nstages:\n" + \
    "\n".join(f"  {name:<10} {text}" for name, text in STAGES.items())


def check_overrides(stage: str, args: list[str]) -> None:
    """Compose the config once before Hydra runs, so that an unknown key, a missing group
    option or an unparsable value fails in one line instead of Hydra's multi-line report.
    Flags (--help, --cfg, -m) and hydra.* overrides are left to Hydra itself."""
    if any(arg.startswith("-") for arg in args):
        return
    from hydra import compose, initialize_config_dir

    from lightning_llm.config import CONF_DIR, check_name, one_line
    from lightning_llm.errors import UserError

    overrides = [arg for arg in args if not arg.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=stage):
            cfg = compose(config_name=stage, overrides=overrides)
        check_name(cfg.experiment_name, "experiment_name")  # it becomes the run dir's folder
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # Hydra raises several types; each is a config mistake here
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def wandb_configured() -> bool:
    """The user chose a W&B mode, or logged in (`wandb login` writes ~/.netrc, or an API key is set)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()


def shared_run_dir(args: list[str]) -> list[str]:
    """Under torchrun or SLURM every rank runs `llm` itself and would resolve its own ${now} run dir:
    name the run dir after what all ranks share (the rendezvous id, the job id, the launcher's pid)."""
    if any(arg.startswith("hydra.run.dir=") for arg in args):
        return []
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        shared = f"torchrun_{run_id if run_id != 'none' else os.getppid()}"
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_ID"):
        shared = f"slurm_{os.environ['SLURM_JOB_ID']}"
    else:
        return []
    return [f"hydra.run.dir=${{paths.output_root}}/${{hydra:job.name}}/${{experiment_name}}/${{now:%Y-%m-%d}}_{shared}"]


def main() -> None:
    relaunched = os.environ.get("LLM_STAGE")
    if relaunched and (len(sys.argv) < 2 or sys.argv[1] not in STAGES):
        # A DDP rank that Lightning started again with this script and the overrides alone.
        name, args = relaunched, sys.argv[1:]
    else:
        if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
            print(USAGE)
            sys.exit(0 if len(sys.argv) >= 2 else 2)
        name, args = sys.argv[1], sys.argv[2:]
        if name not in STAGES:
            print(f"error: unknown stage {name!r}; stages are: {', '.join(STAGES)}", file=sys.stderr)
            sys.exit(2)
        check_overrides(name, args)
    os.environ["LLM_STAGE"] = name
    if not wandb_configured():
        os.environ["WANDB_MODE"] = "offline"  # a run never reaches the network unless the user says so
    sys.argv = [sys.argv[0]] + args + shared_run_dir(args)  # the real script path: Lightning relaunches DDP ranks with it
    importlib.import_module(f"lightning_llm.stages.{MODULES.get(name, name)}").main()


if __name__ == "__main__":
    main()
