"""What an evaluation leaves behind: eval/metrics.json, eval/report.md, the headline table
printed, and the headline metrics in the run's run.json and (if the run used W&B) its summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lightning_llm.artifacts import markdown_table, write_json, write_text

log = logging.getLogger("lightning_llm")


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(header: list[str], rows: list[list]) -> str:
    return markdown_table(header, rows, cell=fmt)


def with_ci(value, ci, digits: int = 4):
    """`2.4200 [2.3900, 2.4500]`: a metric and its 95% interval; the bare value when it has none."""
    if value is None or not ci:
        return value
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def headline(results: dict) -> dict[str, float]:
    """The flat metrics that run.json, W&B and `llm compare` carry."""
    flat = {}
    for split, m in results.get("lm", {}).get("splits", {}).items():
        flat |= {f"{split}/{key}": m[key] for key in ("loss", "ppl", "acc", "bpb")}
    for split, m in results.get("ngram", {}).get("splits", {}).items():
        flat |= {f"ngram/{split}/{key}": m[key] for key in ("loss", "ppl", "bpb")}
    if "generation" in results:
        gen = results["generation"]
        for system, prefix in (("transformer", "gen"), ("ngram", "ngram/gen")):
            flat |= {f"{prefix}/{key}": gen[system][key] for key in ("bleu", "rougeL", "distinct_2")}
    if "classify" in results:
        cls = results["classify"]
        for split in cls["plots"]:
            for init in ("pretrained", "scratch"):
                flat[f"classify/{split}/f1_macro/{init}"] = cls[init][split]["macro"]["f1"]
    return flat


def intervals(results: dict) -> dict[str, list[float]]:
    """The 95% intervals of the headline metrics that have one, keyed `<metric>_ci` (metrics.json only:
    run.json and W&B keep plain numbers)."""
    flat = {}
    for split, m in results.get("lm", {}).get("splits", {}).items():
        flat |= {f"{split}/{key}_ci": m[f"{key}_ci"] for key in ("ppl", "bpb") if m.get(f"{key}_ci")}
    for split, m in results.get("ngram", {}).get("splits", {}).items():
        flat |= {f"ngram/{split}/{key}_ci": m[f"{key}_ci"] for key in ("ppl", "bpb") if m.get(f"{key}_ci")}
    if "generation" in results:
        gen = results["generation"]
        for system, prefix in (("transformer", "gen"), ("ngram", "ngram/gen")):
            flat |= {f"{prefix}/{key}_ci": gen[system][f"{key}_ci"] for key in ("bleu", "rougeL")
                     if gen[system].get(f"{key}_ci")}
    return flat


def headline_markdown(results: dict) -> str:
    """Transformer and baseline side by side; the classifier from pretrained and from scratch."""
    parts = []
    lm, ngram, gen = results.get("lm", {}).get("splits", {}), results.get("ngram", {}), results.get("generation")
    ngram_splits = ngram.get("splits", {})
    baseline = f"{ngram['order']}-gram KN" if ngram else (f"{gen['ngram_order']}-gram KN" if gen else "n-gram")
    rows = []
    for split in dict.fromkeys([*lm, *ngram_splits]):
        ours, theirs = lm.get(split, {}), ngram_splits.get(split, {})
        rows += [[f"{split} loss (nats/token)", ours.get("loss"), theirs.get("loss")],
                 [f"{split} perplexity", with_ci(ours.get("ppl"), ours.get("ppl_ci")),
                  with_ci(theirs.get("ppl"), theirs.get("ppl_ci"))],
                 [f"{split} bits per byte", with_ci(ours.get("bpb"), ours.get("bpb_ci")),
                  with_ci(theirs.get("bpb"), theirs.get("bpb_ci"))],
                 [f"{split} next-token accuracy", ours.get("acc"), None]]
    if gen:
        t, n = gen["transformer"], gen["ngram"]
        rows += [[f"BLEU, {gen['passages']} test continuations", with_ci(t["bleu"], t.get("bleu_ci"), 2),
                  with_ci(n["bleu"], n.get("bleu_ci"), 2)],
                 ["ROUGE-L", with_ci(t["rougeL"], t.get("rougeL_ci")), with_ci(n["rougeL"], n.get("rougeL_ci"))],
                 [f"distinct-2 (true text {gen['reference']['distinct_2']:.3f})", gen["transformer"]["distinct_2"],
                  gen["ngram"]["distinct_2"]]]
    if rows:
        parts.append(table(["metric", "transformer", baseline], rows))
        if any(m.get("bpb_ci") for m in [*lm.values(), *ngram_splits.values()]) or gen:
            parts.append("[brackets]: 95% bootstrap intervals (perplexity and bits per byte over windows of the "
                         "context length, BLEU and ROUGE-L over the passages).")
    if "classify" in results:
        cls = results["classify"]
        rows = [[f"{split} macro F1 ({', '.join(cls['pretrained'][split]['classes_in_macro'])})",
                 cls["pretrained"][split]["macro"]["f1"], cls["scratch"][split]["macro"]["f1"]]
                for split in cls["plots"]]
        rows += [[f"{split} accuracy", cls["pretrained"][split]["accuracy"], cls["scratch"][split]["accuracy"]]
                 for split in cls["plots"]]
        parts.append(table([f"{cls['label']} classification", "fine-tuned pretrained", "same from random init"], rows))
    return "\n\n".join(parts)


def report_markdown(results: dict) -> str:
    model, seconds = results["model"], results["seconds"]
    lines = [f"# Evaluation of {results['run_dir'] or results['ckpt']}", "",
             f"- checkpoint: `{results['ckpt']}`",
             f"- prepared data: `{results['data_dir']}` ({results['tokenizer']} tokenizer)",
             f"- model: {model['parameters'] / 1e6:.2f}M parameters, {model['n_layer']} layers x {model['n_embd']}, "
             f"context {model['block_size']} tokens",
             f"- tasks: {', '.join(results['config']['tasks'])}; seed {results['config']['seed']}; "
             f"{seconds['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items() if k != 'total')})",
             "", "## Headline", "", headline_markdown(results), ""]
    if "lm" in results or "ngram" in results:
        lines += lm_section(results)
    if "generation" in results:
        lines += generation_section(results["generation"])
    if "classify" in results:
        lines += classify_section(results["classify"])
    if "samples" in results:
        lines += ["## Samples for human evaluation", "",
                  f"[samples.md](samples.md): {results['samples']['prompts']} fixed prompts at temperatures "
                  f"{', '.join(map(str, results['samples']['temperatures']))}.", ""]
    return "\n".join(lines)


def lm_section(results: dict) -> list[str]:
    rows = []
    for name, key in (("transformer", "lm"), (f"{results.get('ngram', {}).get('order')}-gram Kneser-Ney", "ngram")):
        for split, m in results.get(key, {}).get("splits", {}).items():
            rows.append([name, split, m["tokens"], m["bytes"], m["loss"], with_ci(m["ppl"], m.get("ppl_ci")),
                         m.get("acc"), with_ci(m["bpb"], m.get("bpb_ci"))])
    lines = ["## Language modelling", "",
             table(["model", "split", "tokens scored", "bytes", "loss (nats/token)", "perplexity", "accuracy",
                    "bits per byte"], rows), "",
             "Both models score the same targets: every token of the split after the first. Bits per byte is the "
             "total loss in bits over the UTF-8 bytes of those tokens' text (document separators count no bytes), "
             "so a char model and a BPE model compare on it."]
    if "lm" in results:
        lines.append(f"The transformer reads windows of {results['model']['block_size']} tokens started every "
                     f"{results['lm']['stride']} tokens; each target is scored once.")
    lines.append(f"Brackets hold 95% percentile-bootstrap intervals: the scored targets are cut into consecutive "
                 f"windows of {results['model']['block_size']} (the context length), and 1000 resamples of "
                 "those windows, with replacement, each give a total loss over total bytes (bits per byte) or "
                 f"tokens (perplexity); seed {results['config']['seed']}.")
    if "ngram" in results:
        n = results["ngram"]
        sizes = ", ".join(f"{n['ngrams'][k]:,} {k}-grams" for k in sorted(n["ngrams"], key=int))
        lines.append(f"The baseline is an interpolated modified Kneser-Ney {n['order']}-gram model over token ids, "
                     f"fitted on the {n['train_tokens']:,} train tokens in {n['fit_seconds']} s ({sizes}).")
    return lines + [""]


def generation_section(gen: dict) -> list[str]:
    rows = [[name, with_ci(gen[key]["bleu"], gen[key].get("bleu_ci"), 2),
             with_ci(gen[key]["rougeL"], gen[key].get("rougeL_ci")), gen[key]["distinct_1"], gen[key]["distinct_2"]]
            for name, key in (("transformer", "transformer"), (f"{gen['ngram_order']}-gram Kneser-Ney", "ngram"))]
    rows.append(["true continuations", None, None, gen["reference"]["distinct_1"], gen["reference"]["distinct_2"]])
    lines = ["## Generation against held-out text", "",
             f"{gen['passages']} passages drawn from the test split; each model is prompted with the first "
             f"{gen['prompt_tokens']} tokens and samples {gen['new_tokens']} more (temperature {gen['temperature']}, "
             f"top-k {gen['top_k']}), scored against the true continuation: BLEU (sacrebleu, corpus, 0-100), "
             "ROUGE-L (mean F-measure, 0-1), distinct-n (unique word n-grams over all, for diversity). "
             "Brackets: 95% percentile-bootstrap intervals over the passages, 1000 resamples (BLEU: corpus BLEU "
             "of each resample; ROUGE-L: the mean).", "",
             table(["system", "BLEU", "ROUGE-L", "distinct-1", "distinct-2"], rows), "", "Examples:", ""]
    for example in gen["examples"]:
        lines += [f"- prompt `{example['prompt']!r}`", f"  - true: `{example['reference']!r}`",
                  f"  - transformer: `{example['transformer']!r}`", f"  - n-gram: `{example['ngram']!r}`"]
    return lines + [""]


def classify_section(cls: dict) -> list[str]:
    classes, label = cls["classes"], cls["label"]
    splits = list(cls["plots"])
    composition = [[name, len(cls["data"]["train"]["works"][name]),
                    *[v for s in splits for v in (len(cls["data"][s]["works"].get(name, [])),
                                                  cls["data"][s]["passages"][name])]] for name in classes]
    lines = [f"## {label.capitalize()} classification by fine-tuning", "",
             f"Passages of {cls['passage_tokens']} tokens; a linear head on the mean of the final hidden states; "
             f"every weight fine-tuned with AdamW (lr {cls['lr']}) for {cls['steps']} steps of {cls['batch_size']} "
             f"passages drawn from the train split with every {label} equally likely. The control starts the same "
             "architecture and head from a random init with the same budget and batches. Splits are by work, so no "
             "work (in either edition) is in two splits.", "",
             table([label, "train works", *[f"{s} {what}" for s in splits for what in ("works", "passages")]],
                   composition), ""]
    for name in classes:
        empty = [s for s in splits if cls["data"][s]["passages"][name] == 0]
        if empty:
            lines.append(f"No {' or '.join(empty)} passage is {name}: there it has no recall or F1 and is left out "
                         f"of the macro average, while passages wrongly called {name} still lower its precision.")
    lines.append("")
    for split in splits:
        rows = []
        for name in ["macro", *classes]:
            cells = []
            for init in ("pretrained", "scratch"):
                m = cls[init][split]["macro"] if name == "macro" else cls[init][split]["per_class"][name]
                cells += [m["precision"], m["recall"], m["f1"]]
            passages = sum(cls["data"][split]["passages"].values()) if name == "macro" else \
                cls["data"][split]["passages"][name]
            rows.append([name, passages, *cells])
        lines += [f"### {split}", "",
                  table([label, "passages", "pretrained P", "R", "F1", "random init P", "R", "F1"], rows), "",
                  f"Accuracy: pretrained {cls['pretrained'][split]['accuracy']:.4f}, "
                  f"random init {cls['scratch'][split]['accuracy']:.4f}.", "",
                  f"![confusion matrices on {split}]({cls['plots'][split]})", ""]
    return lines


def write_outputs(results: dict, out_dir: Path, run_dir: Path | None) -> None:
    results["headline"] = headline(results)
    results["intervals"] = intervals(results)
    write_json(out_dir / "metrics.json", results)
    write_text(out_dir / "report.md", report_markdown(results))
    print(headline_markdown(results))
    log.info("eval: wrote %s and %s", out_dir / "report.md", out_dir / "metrics.json")
    if run_dir is not None:
        record_in_run(run_dir, results["headline"], out_dir)


def record_in_run(run_dir: Path, flat: dict, out_dir: Path) -> None:
    """run.json's `eval` entry holds the latest headline; a W&B run gets it in its summary."""
    path = run_dir / "run.json"
    record = json.loads(path.read_text())
    record["eval"] = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "report": str(out_dir / "report.md"), "metrics": flat}
    write_json(path, record)
    loggers = (record.get("overrides") or {}).get("logger") or {}
    wandb_config = next((c for c in loggers.values() if "Wandb" in str((c or {}).get("_target_", ""))), None)
    if wandb_config is not None:
        wandb_summary(Path(wandb_config.get("save_dir") or run_dir), wandb_config.get("project"), flat,
                      images=sorted(out_dir.glob("*.png")))


def wandb_summary(save_dir: Path, project: str | None, flat: dict, *, images: list[Path] = ()) -> None:
    """Resume the run's W&B run by its id and add the eval metrics to its summary, and the eval's
    plots (the confusion matrices) as images (offline runs are resumed offline, and `wandb sync`
    merges them)."""
    runs = sorted((save_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        log.warning("eval: the run used W&B but %s holds no W&B run; its summary is not updated", save_dir / "wandb")
        return
    import wandb

    run = wandb.init(project=project, id=runs[-1].name.rsplit("-", 1)[-1], resume="allow", dir=str(save_dir))
    run.summary.update({f"eval/{key}": value for key, value in flat.items()})
    if images:
        run.log({f"eval/{path.stem}": wandb.Image(str(path)) for path in images})
    run.finish()
    log.info("eval: headline metrics added to the summary of W&B run %s", run.id)
