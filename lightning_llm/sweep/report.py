"""What a study leaves behind in outputs/sweeps/<study>/: report.md with the trials table, the
best trial and parameter importances, the PNG plots, and best.yaml, a config `llm train` runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from lightning_llm.artifacts import markdown_table, pyplot, save_figure, write_text
from lightning_llm.config import CONF_DIR
from lightning_llm.sweep.objective import command, override
from lightning_llm.sweep.space import SweepSpec
from lightning_llm.sweep.study import RETRY

PLOTS = {  # file name -> optuna.visualization.matplotlib function, and what it shows
    "optimization_history.png": ("plot_optimization_history", "objective by trial, and the best so far"),
    "param_importances.png": ("plot_param_importances", "how much each parameter explains the objective"),
    "parallel_coordinate.png": ("plot_parallel_coordinate", "each trial's parameters against its objective"),
    "intermediate_values.png": ("plot_intermediate_values", "the pruner's view: val loss by step, per trial"),
    "slice.png": ("plot_slice", "the objective against each parameter on its own, one panel per parameter"),
}
# Importances (PED-ANOVA, fANOVA) fit a model of objective ~ parameters to the completed trials: from a
# handful of trials that fit mostly measures noise, so below this many none is shown.
MIN_TRIALS_FOR_IMPORTANCES = 10


def shown_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial but the surplus ones that concurrent workers asked for and never ran."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def note(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    if trial.number in retried_as:
        why = trial.user_attrs.get("fail_reason") or "its worker stopped sending heartbeats"
        return f"{why.split(':')[0]}; requeued as trial {retried_as[trial.number]}"
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_reason") or "failed"
    if trial.state == TrialState.PRUNED:
        return f"pruned at step {trial.last_step}" if trial.last_step is not None else "pruned"
    if RETRY.retried_trial_number(trial) is not None:
        return f"retry of trial {RETRY.retried_trial_number(trial)}"
    return ""


def trials_table(trials: list[FrozenTrial], params: list[str], metric: str) -> str:
    retried_as = {RETRY.retry_history(t)[-1]: t.number for t in trials if RETRY.retry_history(t)}
    rows = [[str(t.number), t.state.name, f"{t.value:.4f}" if t.value is not None else "",
             *(format_value(t.params.get(p)) for p in params),
             f"{t.duration.total_seconds():.1f}" if t.duration else "", note(t, retried_as).replace("|", "/")]
            for t in trials]
    return markdown_table(["trial", "state", metric, *params, "seconds", "note"], rows)


def format_value(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def importances(study: optuna.Study) -> dict[str, float] | str:
    """Optuna's default importance evaluator (PED-ANOVA) over the completed trials, or why there is none."""
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return f"not available: {err}"


def too_few_for_importances(completed: int) -> str | None:
    if completed >= MIN_TRIALS_FOR_IMPORTANCES:
        return None
    return (f"not shown: {completed} completed trial{'s' if completed != 1 else ''}, and importances are computed "
            f"from {MIN_TRIALS_FOR_IMPORTANCES} or more: fitted to fewer, they mostly measure noise")


def draw_plots(study: optuna.Study, study_dir: Path) -> dict[str, str]:
    """Each plot as a PNG; a plot the study cannot draw yet (too few trials) is skipped with its reason."""
    pyplot()  # the file-only backend, before optuna's plots import pyplot
    import optuna.visualization.matplotlib as plots

    skipped = {}
    completed = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    for name, (function, _) in PLOTS.items():
        if name == "param_importances.png" and too_few_for_importances(completed):
            skipped[name] = too_few_for_importances(completed)
            (study_dir / name).unlink(missing_ok=True)  # an earlier run's plot from fewer trials would mislead
            continue
        try:
            with warnings.catch_warnings():  # few trials make empty legends and flat axes: nothing to act on
                warnings.simplefilter("ignore")
                axes = getattr(plots, function)(study)
        except (ValueError, RuntimeError, IndexError, KeyError) as err:
            skipped[name] = str(err) or type(err).__name__
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5)
        save_figure(figure, study_dir / name, dpi=100, bbox_inches="tight")
    return skipped


def write_report(study: optuna.Study, spec: SweepSpec, study_dir: Path, storage_url: str) -> Path:
    trials = shown_trials(study)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    metric = study.user_attrs.get("definition", {}).get("objective", {}).get("metric", "objective")
    params = list(spec.search_space)
    lines = [f"# Study `{study.study_name}`", "",
             f"- storage: `{storage_url}`",
             f"- sampler: {spec.sampler.name}, pruner: {spec.pruner.name}, objective: "
             f"{study.direction.name.lower()} `{metric}`, n_trials {spec.n_trials}",
             "- trials: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n), ""]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    lines += ["## Best trial", ""]
    if complete:
        best = study.best_trial
        lines += [f"Trial {best.number}: `{metric}` = {best.value:.4f}, run dir `{best.user_attrs.get('run_dir')}`.",
                  "",
                  *(f"- `{name}` = {format_value(value)}" for name, value in best.params.items()), "",
                  f"Train it again: `{best_command(study_dir)}` (see best.yaml).", ""]
    else:
        lines += ["No trial has completed yet.", ""]
    lines += ["## Trials", "", trials_table(trials, params, metric), ""]
    lines += ["## Parameter importances", ""]
    found = too_few_for_importances(len(complete)) or importances(study)
    if isinstance(found, str):
        lines += [found, ""]
    else:
        lines += [markdown_table(["parameter", "importance"], [[f"`{p}`", f"{v:.3f}"] for p, v in found.items()]), ""]
    skipped = draw_plots(study, study_dir)
    lines += ["## Plots", ""]
    for name, (_, caption) in PLOTS.items():
        lines += [f"{caption}: not drawn ({skipped[name]})" if name in skipped else f"![{caption}]({name})", ""]
    path = study_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def best_command(study_dir: Path) -> str:
    return f"llm train --config-dir {study_dir} --config-name best"


def best_config(overrides: list[str]) -> tuple[list, dict, list[str]]:
    """Overrides as a primary config: group choices become defaults-list entries, values a tree,
    and deletions (~key), which a YAML file cannot express, stay command-line overrides."""
    defaults: list = ["train"]
    values = OmegaConf.create()
    deletions = []
    for parsed in OverridesParser.create().parse_overrides(overrides):
        key, value = parsed.key_or_group, parsed.value()
        if parsed.is_delete():
            deletions.append(parsed.input_line)
        elif (Path(CONF_DIR) / key).is_dir() and isinstance(value, str):
            defaults.append({f"{'' if parsed.is_add() else 'override '}/{key}": value})
        else:
            OmegaConf.update(values, key, value, force_add=True)
    return defaults + ["_self_"], OmegaConf.to_container(values), deletions


def write_best(study: optuna.Study, study_dir: Path) -> Path | None:
    """best.yaml: the base overrides and the best trial's parameters, as a config that
    `llm train --config-dir <study dir> --config-name best` trains."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    definition = study.user_attrs["definition"]
    overrides = definition["train_overrides"] + [override(k, v) for k, v in best.params.items()]
    defaults, values, deletions = best_config(overrides)
    values["experiment_name"] = f"{study.study_name}-best"
    metric = definition["objective"]["metric"]
    header = [f"# The best trial of study {study.study_name}: trial {best.number}, {metric} = {best.value:.4f}.",
              f"# {command(overrides)}",
              f"# Train it: {' '.join([best_command(study_dir), *deletions])}"]
    body = OmegaConf.to_yaml({"defaults": defaults, **values}, sort_keys=False)
    path = study_dir / "best.yaml"
    write_text(path, "\n".join(header) + "\n" + body)
    return path
