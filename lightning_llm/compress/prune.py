"""Pruning a GPT: unstructured magnitude pruning, and structured pruning of attention heads or MLP
channels that builds a smaller model (a smaller config: fewer heads, a narrower MLP).

Magnitude pruning goes through torch.nn.utils.prune (global L1 over the blocks' linear weights);
it zeroes weights but keeps every matrix its size, so it saves neither time nor disk with dense
kernels. Structured pruning ranks heads and channels by an importance score and copies the kept
rows and columns into a model of the smaller config:

  taylor       |dL/dm| of a mask m on each head's output (or channel's activation), averaged over a
               few batches of training data (Michel et al. 2019, Molchanov et al. 2019). It equals
               |sum(W * dL/dW)| over the columns of the output projection that the head (or channel)
               feeds, which one backward pass gives for every head and channel at once
  weight_norm  the norm of those output columns times the norm of the rows that produce them (both
               rows of a SwiGLU channel, gate and value); no data

Every layer keeps the same number of heads (or channels), so the config stays one per model.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from lightning_llm.errors import UserError
from lightning_llm.model import GPT

KINDS = ("magnitude", "heads", "mlp")
IMPORTANCE = ("taylor", "weight_norm")


def block_linears(model: GPT) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.blocks.modules() if isinstance(m, nn.Linear)]


def magnitude(model: GPT, amount: float) -> GPT:
    """A copy with the `amount` smallest-magnitude block weights (over all blocks) set to zero."""
    out = copy.deepcopy(model)
    params = block_linears(out)
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, name in params:
        torch_prune.remove(module, name)
    return out


def hold_zeros(model: GPT) -> None:
    """Keep today's zero weights at zero while training (a mask applied before every forward)."""
    for module, name in block_linears(model):
        torch_prune.custom_from_mask(module, name, mask=getattr(module, name) != 0)


def release_zeros(model: GPT) -> None:
    """Fold the masks of hold_zeros into plain weights."""
    for module, name in block_linears(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)


def sparsity(model: GPT) -> float:
    weights = [m.weight for m, _ in block_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def sample_batches(tokens: np.ndarray, *, block_size: int, batch_size: int, count: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of random training windows (inputs, targets), reproducible by seed."""
    rng = np.random.default_rng(seed)
    offsets = np.arange(block_size + 1)
    out = []
    for _ in range(count):
        starts = rng.integers(0, len(tokens) - block_size - 1, size=batch_size)
        window = torch.from_numpy(np.asarray(tokens[starts[:, None] + offsets], dtype=np.int64))
        out.append((window[:, :-1], window[:, 1:]))
    return out


def _units(kind: str, config) -> int:
    return config.n_head if kind == "heads" else config.mlp_hidden


def _output_columns(block, kind: str, config) -> torch.Tensor:
    """The output matrix's columns grouped by unit: (units, out_features, width)."""
    if kind == "heads":
        w = block.attn.proj.weight  # (n_embd, n_head * head_dim)
        return w.view(w.shape[0], config.n_head, config.head_dim).transpose(0, 1)
    return block.mlp.down.weight.T.unsqueeze(1)  # (n_embd, hidden) -> (hidden, 1, n_embd)


def importance(model: GPT, kind: str, *, method: str = "taylor",
               batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """One score per head (kind=heads) or MLP channel (kind=mlp) in each layer; higher is kept."""
    config = model.config
    if method == "weight_norm":
        scores = []
        for block in model.blocks:
            out_norm = _output_columns(block, kind, config).detach().flatten(1).norm(dim=1)
            if kind == "heads":  # the value rows that feed each head
                v = block.attn.qkv.weight[config.n_head * config.head_dim + config.n_kv_head * config.head_dim:]
                v_norm = v.detach().view(config.n_kv_head, -1).norm(dim=1)
                in_norm = v_norm.repeat_interleave(config.n_head // config.n_kv_head)
            else:  # SwiGLU: silu(gate) * value, so both rows produce the channel, and a zero one silences it
                up = block.mlp.up.weight.detach()
                in_norm = up[:config.mlp_hidden].norm(dim=1)
                if config.mlp == "swiglu":
                    in_norm = in_norm * up[config.mlp_hidden:].norm(dim=1)
            scores.append((out_norm * in_norm).cpu())
        return scores
    if not batches:
        raise ValueError("taylor importance needs batches of data")
    model = copy.deepcopy(model).train(False)
    device = next(model.parameters()).device
    scores = [torch.zeros(_units(kind, config)) for _ in model.blocks]
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        for layer, block in enumerate(model.blocks):
            w, g = _output_columns(block, kind, config), _output_columns_grad(block, kind, config)
            scores[layer] += (w * g).detach().flatten(1).sum(dim=1).abs().cpu()
    return [s / len(batches) for s in scores]


def _output_columns_grad(block, kind: str, config) -> torch.Tensor:
    if kind == "heads":
        g = block.attn.proj.weight.grad
        return g.view(g.shape[0], config.n_head, config.head_dim).transpose(0, 1)
    return block.mlp.down.weight.grad.T.unsqueeze(1)


def removed_count(kind: str, config, *, amount: float | None = None, count: int | None = None) -> int:
    """How many heads (or channels) per layer go; one line when that would leave none or remove none."""
    units = _units(kind, config)
    what = "heads" if kind == "heads" else "MLP channels"
    if count is not None:
        remove = count
        asked = f"prune.count={count}"
    else:
        remove = int(round(amount * units))
        asked = f"prune.amount={amount}"
    if remove >= units:
        raise UserError(f"{asked} removes {remove} {what} per layer, but each layer has {units}: "
                        "at least one must remain")
    if remove < 1:
        raise UserError(f"{asked} removes no {what} (each layer has {units}): raise it")
    return remove


def structured(model: GPT, kind: str, scores: list[torch.Tensor], remove: int) -> tuple[GPT, list[list[int]]]:
    """The smaller model that keeps, in every layer, the units with the highest scores (in their
    original order); and the kept indices per layer."""
    config = model.config
    keep_n = _units(kind, config) - remove
    kept = [sorted(s.topk(keep_n).indices.tolist()) for s in scores]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if kind == "heads":
        if config.n_kv_head != config.n_head:
            raise UserError(f"prune.kind=heads: this model uses grouped-query attention (n_head {config.n_head}, "
                            f"n_kv_head {config.n_kv_head}); head pruning needs plain multi-head attention: "
                            "use prune.kind=mlp")
        hd = config.head_dim
        new_config = dataclasses.replace(config, n_head=keep_n, n_kv_head=keep_n, head_size=hd)
        for layer, idx in enumerate(kept):
            cols = (torch.tensor(idx)[:, None] * hd + torch.arange(hd)).flatten()
            rows = torch.cat([part * config.n_head * hd + cols for part in range(3)])  # q, k, v
            prefix = f"blocks.{layer}.attn."
            state[prefix + "qkv.weight"] = state[prefix + "qkv.weight"][rows]
            if config.bias:
                state[prefix + "qkv.bias"] = state[prefix + "qkv.bias"][rows]
            state[prefix + "proj.weight"] = state[prefix + "proj.weight"][:, cols]
    else:
        hidden = config.mlp_hidden
        new_config = dataclasses.replace(config, mlp_hidden_size=keep_n)
        for layer, idx in enumerate(kept):
            cols = torch.tensor(idx)
            rows = torch.cat([cols, hidden + cols]) if config.mlp == "swiglu" else cols  # gate and value halves
            prefix = f"blocks.{layer}.mlp."
            state[prefix + "up.weight"] = state[prefix + "up.weight"][rows]
            if config.bias:
                state[prefix + "up.bias"] = state[prefix + "up.bias"][rows]
            state[prefix + "down.weight"] = state[prefix + "down.weight"][:, cols]
    out = GPT(new_config)
    out.load_state_dict(state)
    weight = next(model.parameters())
    return out.to(device=weight.device, dtype=weight.dtype).eval(), kept
