"""The model card (README.md) of an export, written from what the run recorded: run.json (data,
budget, training metrics), its `llm eval` headline (metrics with their splits), and the data card
of the prepared data, which is copied beside it. Nothing in it is typed by hand: a run without a
record says so instead of guessing."""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning_llm.artifacts import markdown_table

SPLITS = ("train", "val", "test")
DATA_CARD = "data_card.md"


def copy_data_card(run_record: dict | None, folder: Path) -> str | None:
    """The prepared data's card (report.md, and the plot it shows) copied into the export; its file name."""
    data_dir = Path(((run_record or {}).get("data") or {}).get("dir") or "")
    if not run_record or not (data_dir / "report.md").is_file():
        return None
    shutil.copyfile(data_dir / "report.md", folder / DATA_CARD)
    for extra in data_dir.glob("*.png"):
        shutil.copyfile(extra, folder / extra.name)
    return DATA_CARD


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table(header: list[str], rows: list[list]) -> str:
    return markdown_table(header, rows, cell=fmt)


def metric_rows(flat: dict) -> list[list]:
    """`val/loss`, `ngram/test/bpb`, `gen/bleu`, ... as (metric, split, value). The generation
    metrics score continuations of test passages (`llm eval`'s generation task)."""
    rows = []
    for key, value in flat.items():
        parts = key.split("/")
        if parts[0].startswith("best_"):  # best_val/loss: the best validation loss of the run
            parts = [parts[0].removeprefix("best_"), "best", *parts[1:]]
        split = next((p for p in parts if p in SPLITS), "test" if "gen" in parts else "–")
        rows.append([" ".join(p for p in parts if p != split), split, value])
    return rows


def eval_results(flat: dict, data_name: str) -> list:
    """The model's own language-modelling metrics (not the baselines') as model-index entries."""
    from huggingface_hub import EvalResult

    results = []
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] in SPLITS and isinstance(value, (int, float)):
            results.append(EvalResult(task_type="text-generation", dataset_type=data_name, dataset_name=data_name,
                                      dataset_split=parts[0], metric_type=parts[1], metric_value=value))
    return results


def model_card(*, record: dict, parameters: int, run_record: dict | None, data_card: str | None,
               default_template: bool) -> str:
    """README.md of an export: metadata for the Hub, then use, model, data, training, evaluation, limits."""
    from huggingface_hub import ModelCard, ModelCardData

    config, arch, check = record["model_config"], record["architecture"], record["check"]
    head_size = config.get("head_size") or config["n_embd"] // config["n_head"]  # set where heads were pruned
    run = run_record or {}
    data = run.get("data") or {}
    data_name = data.get("name") or "unknown"
    name = run.get("experiment") or Path(record["source"]).name
    evaluation = run.get("eval") or {}
    flat = evaluation.get("metrics") or {}
    metadata = ModelCardData(library_name="transformers", pipeline_tag="text-generation", model_name=name,
                             tags=["lightning-llm", record["model_type"]],
                             eval_results=eval_results(flat, data_name) or None)

    produced_by = (record.get("source_manifest") or {}).get("produced_by", "unknown")
    origin = "trained with lightning-llm" if run else f"from lightning-llm (produced by `{produced_by}`)"
    match = "exactly" if check["max_abs_logit_diff"] == 0 else f"to {check['max_abs_logit_diff']:.2g}"
    lines = [f"# {name}", "",
             f"A causal language model of {parameters:,} parameters {origin}, exported as a stock `{arch}`: "
             f"`AutoModelForCausalLM` loads it with no custom code. Its logits match the original's {match} "
             f"(largest absolute difference over {check['tokens']} random tokens, fp32).", "",
             "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
             'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
             'ids = tokenizer("The", return_tensors="pt").input_ids',
             "out = model.generate(ids, max_new_tokens=100, do_sample=True, temperature=0.8, top_k=50)",
             "print(tokenizer.decode(out[0]))", "```", "",
             f"The context window is {config['block_size']} tokens (`max_position_embeddings`). Generation "
             "stops at the end-of-text token every training document ended with. The chat template is "
             + ("the plain role-marker one (`USER:` and `ASSISTANT:` lines): the model was not tuned on chats."
                if default_template else "the one recorded with the model."),
             "", "## Model", "",
             table(["", ""], [["architecture", f"{arch} (lightning-llm: position={config['position']}, "
                                                f"norm={config['norm']}, mlp={config['mlp']})"],
                              ["layers", config["n_layer"]],
                              ["attention heads", f"{config['n_head']} of size {head_size} ({config['n_kv_head']} "
                                                  "key/value heads)"],
                              ["width", config["n_embd"]],
                              ["MLP width", record["mlp_hidden"]],
                              ["vocabulary", config["vocab_size"]],
                              ["context", config["block_size"]],
                              ["tied input/output embeddings", config["tie_embeddings"]],
                              ["parameters", parameters]]), ""]

    lines += ["## Training data", ""]
    if data:
        splits = data.get("splits") or {}
        lines += [f"Prepared data `{data.get('hash', data_name)}` (source `{data_name}`), tokenized with a "
                  f"`{data.get('tokenizer')}` tokenizer of {data.get('vocab_size')} tokens.", "",
                  table(["split", "documents", "tokens", "bytes per token"],
                        [[s, m.get("documents"), m.get("tokens"), m.get("bytes_per_token")]
                         for s, m in splits.items()]), "",
                  (f"The data card (sources, cleaning, deduplication, splits, leakage checks) is "
                   f"[{data_card}]({data_card})." if data_card
                   else f"The data card was not found at {data.get('dir')}/report.md."), ""]
    else:
        lines += ["No training record (run.json) was found beside the exported model, so its data is not known "
                  "here.", ""]

    lines += ["## Training", ""]
    if run:
        optimizer = ((run.get("overrides") or {}).get("optim") or {}).get("optimizer") or {}
        budget = [["steps", run.get("steps")], ["tokens seen", run.get("tokens_seen")],
                  ["training time (s)", run.get("train_seconds")], ["precision", run.get("precision")],
                  ["optimizer", f"{optimizer.get('_target_', '?').rsplit('.', 1)[-1]} lr={optimizer.get('lr')}"],
                  ["batch size", (run.get("overrides") or {}).get("batch_size")], ["seed", str(run.get("seed"))],
                  ["git commit", run.get("git_commit")]]
        lines += [table(["", ""], [[k, v] for k, v in budget if v is not None]), ""]
        final = {k: v for k, v in (run.get("metrics") or {}).items() if k.split("/")[0] in ("val", "best_val", "train")
                 and not k.startswith("train/grad")}
        if final:
            lines += ["At the end of training:", "", table(["metric", "split", "value"], metric_rows(final)), ""]
    else:
        lines += ["No training record (run.json) was found.", ""]

    lines += ["## Evaluation", ""]
    if flat:
        lines += [f"From `llm eval` ({evaluation.get('at')}); loss is in nats per token, bpb is bits per byte; "
                  "`ngram` rows are the Kneser-Ney baseline on the same splits, `gen` rows score sampled "
                  "continuations of test passages.", "",
                  table(["metric", "split", "value"], metric_rows(flat)), ""]
    else:
        lines += ["No `llm eval` results were recorded for this model: run `llm eval ckpt=<run dir>` before "
                  "exporting to include them.", ""]

    lines += ["## Intended use and limitations", "",
              "Intended for research and teaching: studying how a small language model learns, comparing "
              "architectures and training choices, and as a small real model for testing tools.", "",
              f"- It learned only from its training data{f' ({data_name})' if data else ''}: it imitates that "
              "text's style and knows nothing else. Its output is fluent-looking but not reliable; it states "
              "no facts.",
              "- It is not instruction-tuned or safety-tuned, and reproduces the biases and attitudes of its "
              "training text.",
              f"- It has seen at most {config['block_size']} tokens of context"
              + (" and cannot go beyond that window (learned positions)." if config["position"] == "learned"
                 else "; past that window its rotary positions are untrained."),
              "- Not for decisions about people, nor for text shown to anyone as true.", "",
              "## Provenance", "",
              table(["", ""], [["exported from", record["source"]], ["run dir", record.get("run_dir") or "–"],
                               ["produced by", produced_by],
                               ["exported", record["created"]], ["lightning-llm", record["lightning_llm"]],
                               ["transformers", record["transformers"]]]), ""]
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines)))
