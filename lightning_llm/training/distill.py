"""Knowledge distillation (Hinton et al. 2015) as a LightningModule: the student of `llm train`
learns from a frozen teacher's temperature-softened next-token distribution and from the data.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, data)

T^2 keeps the soft term's gradients on the scale of the hard term's as T grows. The teacher runs
in inference mode and is not part of the module's state: checkpoints hold the student alone, so
they resume and export like any training checkpoint. Validation is the student's cross-entropy,
as in `llm train`, so val/loss and val/bpb compare with a student trained from scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_llm.model import GPT
from lightning_llm.training.module import LanguageModel, NonFiniteLoss


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher softened || student softened), averaged over positions (nats per token)."""
    vocab = student_logits.size(-1)
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


class DistillationModel(LanguageModel):
    def __init__(self, model_config: dict, tokenizer_json: str, *, teacher: GPT, temperature: float = 2.0,
                 alpha: float = 0.5, **kwargs):
        """kwargs: LanguageModel's (optimizer, scheduler, bytes_per_token)."""
        if teacher.config.vocab_size != model_config["vocab_size"]:
            raise ValueError(f"teacher vocabulary {teacher.config.vocab_size} != student {model_config['vocab_size']}")
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ValueError(f"temperature must be > 0 and alpha in [0, 1], got {temperature} and {alpha}")
        super().__init__(model_config, tokenizer_json, **kwargs)
        self.save_hyperparameters("temperature", "alpha")
        # Kept out of the module's children: not trained, not in the optimizer, not in checkpoints.
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.temperature, self.alpha = temperature, alpha

    def on_fit_start(self):
        self.teacher.to(self.device)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, KL term, cross-entropy) of one batch."""
        logits, ce = self.model(x, y)
        with torch.inference_mode():
            teacher_logits, _ = self.teacher(x, every_position=True)
        teacher_logits = teacher_logits.clone()  # out of inference mode: autograd may keep it for the backward
        kl = distillation_kl(logits, teacher_logits, self.temperature)
        loss = self.alpha * self.temperature ** 2 * kl + (1 - self.alpha) * ce
        return loss, kl, ce

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, kl, ce = self.losses(x, y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite distillation loss ({loss.item()}) at step {self.global_step}: lower "
                                "optim.optimizer.lr or raise distill.temperature")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/kl": kl, "train/ce": ce})
        return loss
