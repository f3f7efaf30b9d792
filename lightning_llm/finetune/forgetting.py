"""The new domain's loss and the base domain's, before and after a fine-tune: what it learned
and what it forgot, as a Markdown table and a PNG in the run dir; with finetune.forget, a third
row: the loss of the text it was pushed away from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_llm.artifacts import markdown_table, pyplot, save_figure, write_text


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device | str = "cpu") -> float:
    """Mean loss per target token over the batches; targets of -1 (no loss) are left out."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            _, loss = model(x.to(device), y.to(device))
            n = int((y != -1).sum())
            if n:
                total, count = total + float(loss) * n, count + n
    finally:
        model.train(was_training)
    return total / max(count, 1)


@dataclass
class DomainLoss:
    domain: str  # "new" | "base" | "forget" (the text to forget)
    data: str  # what was scored (a prepared folder's split, held-out records)
    before: float
    after: float | None = None

    @property
    def change(self) -> float | None:
        return None if self.after is None else self.after - self.before

    def as_dict(self) -> dict:
        return {"domain": self.domain, "data": self.data, "before": round(self.before, 4),
                "after": None if self.after is None else round(self.after, 4),
                "change": None if self.change is None else round(self.change, 4)}


def report(rows: list[DomainLoss], run_dir: Path, *, title: str) -> str:
    """forgetting.md (the table) and plots/forgetting.png (before/after bars); returns the table."""
    table = markdown_table(["domain", "scored on", "loss before", "loss after", "change"],
                           [[r.domain, f"`{r.data}`", f"{r.before:.4f}", "n/a" if r.after is None else f"{r.after:.4f}",
                             "n/a" if r.change is None else f"{r.change:+.4f}"] for r in rows])
    write_text(run_dir / "forgetting.md",
               f"# {title}\n\nMean loss per target token (nats) of the base model (before) and the fine-tuned "
               f"model (after). The new domain's should fall; the base domain's rising is forgetting."
               + (" The forget text's should rise: it is the text the model was pushed away from."
                  if any(r.domain == "forget" for r in rows) else "") + "\n\n"
               f"{table}\n\n![losses](plots/forgetting.png)\n")
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    width = 0.38
    for i, r in enumerate(rows):
        ax.bar(i - width / 2, r.before, width, color="tab:gray", label="before" if i == 0 else None)
        if r.after is not None:
            ax.bar(i + width / 2, r.after, width, color="tab:blue", label="after" if i == 0 else None)
            ax.annotate(f"{r.change:+.3f}", (i + width / 2, r.after), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(rows)), ["forget text" if r.domain == "forget" else f"{r.domain} domain" for r in rows])
    ax.set(ylabel="loss (nats per token)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    save_figure(fig, run_dir / "plots" / "forgetting.png", dpi=110, bbox_inches="tight")
    return table
