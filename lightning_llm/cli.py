"""`llm <stage> [hydra overrides...]`: one Hydra app per stage, config in conf/<stage>.yaml."""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

STAGES = {
    "prepare": "read, clean and split the corpus, train the tokenizer, write token shards",
    "train": "train a GPT with Lightning (prepares data first if needed)",
    "generate": "sample a continuation of a prompt from a trained model",
    "sweep": "search hyperparameters with Optuna: one training run per trial",
    "eval": "evaluate a trained model: perplexity, bits per byte, baselines, generation, classification",
    "compare": "one table of the headline metrics of several runs",
    "serve": "serve a trained model over an OpenAI-compatible HTTP API",
    "index": "build a BM25 index of a folder's passages for retrieval (llm serve rag.index=<name>)",
    "export": "write a trained model as a Hugging Face transformers folder (format=hf)",
    "import": "read a local Hugging Face transformers folder into a model folder",
    "compress": "quantize (torchao) or prune a trained model; a report against the original",
    "distill": "train a smaller student on a trained teacher's softened outputs (knowledge distillation)",
    "finetune": "continue a trained model on new data: full or LoRA, text or instruction, forgetting measured",
    "registry": "versions of a model, one live: llm registry list|show|promote|rollback|status name=<registry>",
    "update": "continue a registry's live version on new data with replay; promote only if the eval gate passes",
}
MODULES = {"import": "hf_import"}  # a stage whose module is named otherwise (`import` is a Python keyword)
ACTIONS = {"registry": ("list", "show", "promote", "rollback", "status")}  # `llm registry promote ...` is action=promote

USAGE = "usage: llm <stage> [hydra overrides...]   (llm <stage> --help shows that stage's config)\n\nstages:\n" + \
    "\n".join(f"  {name:<10} {text}" for name, text in STAGES.items())


# Hydra's flags that never call the stage's function: they need the stage's config, not its code,
# so they run on a no-op app and the stage's imports (Lightning, torch, Optuna) are never paid for.
CONFIG_ONLY_FLAGS = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightning-llm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def stage_usage(stage: str) -> tuple[str, dict[str, str]]:
    """The first line of conf/<stage>.yaml (`# llm eval ckpt=<run dir | ...> ...`) and the
    placeholder it gives each key, e.g. {"ckpt": "<run dir | .ckpt | model folder>"}."""
    from lightning_llm.config import CONF_DIR

    first = (Path(CONF_DIR) / f"{stage}.yaml").read_text().splitlines()[0].lstrip("# ").strip()
    usage = first.split(": ", 1)[0] if first.startswith("llm ") else f"llm {stage}"
    if "=" not in usage:
        usage += " [group=option ...] [key=value ...]"
    hints = {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(<[^>]*>|\[[^\]]*\])", first)}
    return usage, hints


def missing_keys(cfg, prefix: str = "") -> list[str]:
    """The keys left at `???`, found without resolving anything (${hydra:...} cannot resolve here)."""
    from omegaconf import DictConfig, OmegaConf

    found = []
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += missing_keys(cfg[key], f"{prefix}{key}.")
    return found


def missing_message(stage: str, keys: list[str]) -> str:
    """`ckpt is required: pass ckpt=<run dir | .ckpt | model folder>`, for each missing key."""
    _, hints = stage_usage(stage)
    return "; ".join(f"{key} is required: pass {key}={hints.get(key, '<value>')}" for key in keys)


def compose_stage(stage: str, overrides: list[str], *, hydra: bool = False):
    from hydra import compose, initialize_config_dir

    from lightning_llm.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=stage):
        return compose(config_name=stage, overrides=overrides, return_hydra_config=hydra)


def stage_help(stage: str, args: list[str]) -> str:
    """`llm <stage> --help`: what the stage does, the config groups it composes (with every option
    and the chosen one starred), for sweep the studies in sweeps/, then its config. Hydra's own
    help would list every group under conf/, most of which the stage refuses."""
    from omegaconf import OmegaConf

    from lightning_llm.config import CONF_DIR, SWEEPS_DIR

    overrides = [a for a in args if not a.startswith("-")]
    cfg = compose_stage(stage, overrides, hydra=True)
    usage, _ = stage_usage(stage)
    lines = [f"usage: {usage}", "", f"{stage}: {STAGES[stage]}", ""]
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if g != "hydra" and not g.startswith("hydra/")}
    if choices:
        lines.append("config groups (group=option; * marks the one in use):")
        for group in sorted(choices):
            options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))
            shown = [f"{o}*" if o == choices[group] else o for o in options]
            lines.append(f"  {group:<16} {', '.join(shown)}")
        lines.append("")
    if stage == "sweep":
        lines.append(f"sweeps (sweep=<name>, from {SWEEPS_DIR}):")
        for path in sorted(Path(SWEEPS_DIR).glob("*.yaml")):
            about = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            lines.append(f"  {path.stem:<26} {about}")
        lines.append("")
    with_hydra = OmegaConf.to_container(cfg, resolve=False)
    with_hydra.pop("hydra", None)
    lines += ["config (override any key: key=value; -m key=a,b for one run per value):", "",
              OmegaConf.to_yaml(with_hydra).rstrip(), "",
              f"Hydra's own flags: llm {stage} --hydra-help; the composed config alone: llm {stage} --cfg job"]
    return "\n".join(lines)


def check_overrides(stage: str, args: list[str]) -> None:
    """Compose the config once before Hydra runs, so that an unknown key, a missing group
    option or an unparsable value fails in one line instead of Hydra's multi-line report.
    Flags (--help, --cfg, -m) and hydra.* overrides are left to Hydra itself."""
    if any(arg.startswith("-") for arg in args):
        return
    from lightning_llm.config import check_name, one_line
    from lightning_llm.errors import UserError

    overrides = [arg for arg in args if not arg.lstrip("+~").startswith("hydra.")]
    try:
        cfg = compose_stage(stage, overrides)
        check_name(cfg.experiment_name, "experiment_name")  # it becomes the run dir's folder
        missing = missing_keys(cfg)
        if missing:
            raise UserError(missing_message(stage, missing))
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
        if sys.argv[1] in ("-V", "--version"):
            print(f"lightning-llm {package_version()}")
            sys.exit(0)
        name, args = sys.argv[1], sys.argv[2:]
        if name not in STAGES:
            print(f"error: unknown stage {name!r}; stages are: {', '.join(STAGES)}", file=sys.stderr)
            sys.exit(2)
        if args and args[0] in ACTIONS.get(name, ()):
            args = [f"action={args[0]}"] + args[1:]
        if "--help" in args or "-h" in args:
            try:
                text = stage_help(name, args)
            except Exception as err:  # an override the help cannot compose: the same one line as a run
                from lightning_llm.config import one_line

                print(f"error: {one_line(err)}", file=sys.stderr)
                sys.exit(2)
            try:
                print(text, flush=True)
            except BrokenPipeError:  # `llm train --help | head`: the reader has seen what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        check_overrides(name, args)
        if any(arg.split("=", 1)[0] in CONFIG_ONLY_FLAGS for arg in args):
            from lightning_llm.stages.common import stage

            sys.argv = [sys.argv[0]] + args
            stage(name)(lambda cfg: None)()  # Hydra prints and returns before any stage code would run
            return
    os.environ["LLM_STAGE"] = name
    if not wandb_configured():
        os.environ["WANDB_MODE"] = "offline"  # a run never reaches the network unless the user says so
    sys.argv = [sys.argv[0]] + args + shared_run_dir(args)  # the real script path: Lightning relaunches DDP ranks with it
    importlib.import_module(f"lightning_llm.stages.{MODULES.get(name, name)}").main()


if __name__ == "__main__":
    main()
