"""Genre classification by fine-tuning: does pretraining help a downstream task?

A linear head reads the mean of the GPT's final hidden states over a passage; the whole
network is fine-tuned. The same head and budget on the same architecture from a random
init is the control: the gap between the two is what pretraining bought.

Precision, recall and F1 come from the confusion matrix. A class with no passage in a
split (the poems fall only in train in the default corpus) has no recall or F1 there; it
is left out of that split's macro average, and passages wrongly called by it still count
against its precision.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_llm.artifacts import pyplot, save_figure
from lightning_llm.data.prepared import PreparedData
from lightning_llm.evaluation.config import ClassifyTask
from lightning_llm.evaluation.passages import BalancedWindows, DocumentSpan, labelled_passages
from lightning_llm.model import GPT


class SequenceClassifier(nn.Module):
    def __init__(self, body: GPT, n_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.n_embd, n_classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.body.features(idx).mean(dim=1))


def fine_tune(classifier: SequenceClassifier, batches: BalancedWindows, steps: int, batch_size: int, lr: float,
              device: str, desc: str) -> list[float]:
    """AdamW on every weight for a fixed number of steps; returns the training losses."""
    classifier.to(device).train()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr)
    losses = []
    for _ in (bar := tqdm(range(steps), desc=desc, leave=False)):
        windows, labels = batches.batch(batch_size)
        logits = classifier(torch.from_numpy(windows).to(device))
        loss = F.cross_entropy(logits, torch.from_numpy(labels).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


@torch.no_grad()
def predict(classifier: SequenceClassifier, windows: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    classifier.eval()
    preds = [classifier(torch.from_numpy(windows[i:i + batch_size]).to(device)).argmax(dim=-1).cpu()
             for i in range(0, len(windows), batch_size)]
    return torch.cat(preds).numpy()


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(confusion: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and their macro average over the
    classes present in the split. None marks a value with nothing to measure."""
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    per_class = {}
    for i, name in enumerate(classes):
        precision = tp[i] / predicted[i] if predicted[i] else (0.0 if support[i] else None)
        recall = tp[i] / support[i] if support[i] else None
        f1 = None if recall is None else (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support[i]),
                           "predicted": int(predicted[i])}
    in_macro = [name for name, n in zip(classes, support) if n]
    macro = {key: float(np.mean([per_class[name][key] for name in in_macro])) for key in ("precision", "recall", "f1")}
    return {"accuracy": float(tp.sum() / confusion.sum()), "macro": macro, "per_class": per_class,
            "classes_in_macro": in_macro,
            "confusion": confusion.tolist()}


def plot_confusions(matrices: dict[str, np.ndarray], classes: list[str], title: str, path: Path) -> None:
    """One panel per model, counts in the cells, shaded by the share of each true class."""
    fig, axes = pyplot().subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if shares[row, col] > 0.6 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=name)
        ax.set_xticklabels(classes, rotation=30)
        ax.set_yticklabels(classes)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def pretrained_vs_random(model: GPT, documents: list[DocumentSpan], data: PreparedData, task: ClassifyTask, *,
                         seed: int, device: str, out_dir: Path) -> dict:
    """Fine-tune a classifier of `task.label` from the model's weights and, as the control, from a
    seeded random init of the same architecture, on the same balanced train batches; score both on
    val and test; plot their confusion matrices into out_dir. Returns the results section."""
    label = task.label
    length = min(task.passage_tokens or model.config.block_size, model.config.block_size)
    classes = sorted({d.meta[label] for d in documents})
    splits = [s for s in ("val", "test") if any(d.split == s for d in documents)]
    evaluated = {s: labelled_passages(documents, data.tokens(s), s, label, classes, length, task.max_eval_passages)
                 for s in splits}
    train_works = {name: sorted({d.meta.get("work", d.id) for d in documents
                                 if d.split == "train" and d.meta[label] == name}) for name in classes}
    described = {"train": {"works": train_works}}
    described |= {s: {"works": p.works_by_class, "passages": p.counts(classes)} for s, p in evaluated.items()}
    results = {"label": label, "classes": classes, "passage_tokens": length, "steps": task.steps,
               "batch_size": task.batch_size, "lr": task.lr, "data": described}
    starts = {"pretrained": lambda: copy.deepcopy(model), "scratch": lambda: GPT(model.config)}
    matrices: dict[str, dict[str, np.ndarray]] = {s: {} for s in splits}
    for init, make_body in starts.items():
        torch.manual_seed(seed)  # a seeded random init for the control
        body = make_body()
        torch.manual_seed(seed)  # and the same head init for both
        classifier = SequenceClassifier(body, len(classes))
        batches = BalancedWindows(documents, data.tokens("train"), "train", label, classes, length, seed)
        losses = fine_tune(classifier, batches, task.steps, task.batch_size, task.lr, device, desc=f"classify ({init})")
        results[init] = {"train_loss_last_10": float(np.mean(losses[-10:]))}
        for split, passages in evaluated.items():
            preds = predict(classifier, passages.windows, task.batch_size, device)
            matrices[split][init] = confusion_matrix(passages.labels, preds, len(classes))
            results[init][split] = classification_metrics(matrices[split][init], classes)
    names = {"pretrained": "pretrained", "scratch": "random init"}
    for split in splits:
        plot_confusions({f"{names[init]} ({results[init][split]['macro']['f1']:.2f} macro F1)": m
                         for init, m in matrices[split].items()},
                        classes, f"{label} on {split}: pretrained vs random init", out_dir / f"confusion_{split}.png")
    results["plots"] = {split: f"confusion_{split}.png" for split in splits}
    return results
