"""fp32 weights laid out for decoding on a CPU: how a matrix-vector product streams them fastest.

Decoding one token multiplies a few rows by every weight matrix, so its speed is how fast each
matrix streams from memory, and that depends on the layout. Measured on a 2-core Zen 4
(`bench/layout.py`, docs/benchmarks.md "Weight layout"): MKL's fp32 product of one row runs on
one thread and streams a matrix about twice as fast when its longer side is contiguous, and
splitting the output features into one slice per thread, computed as one batched product
(`bmm`, which runs the slices in parallel), adds up to 1.4x more. So at load each fp32 linear
layer's weight is stored as `groups` slices of its output features, each with its longer side
contiguous, and a `LaidOutLinear` computes exactly what the `nn.Linear` it replaces computed.
The checkpoint on disk is untouched; a laid-out model is for inference only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

LAYOUTS = ("rows", "columns")  # a slice stored (out, in) as nn.Linear does, or (in, out)
MIN_SPLIT = 128 * 1024  # weights below this many elements (512 KiB in fp32) stay one slice


class LaidOutLinear(nn.Module):
    """y = x W^T + b with W held as `groups` slices of output features in `layout`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, groups: int, layout: str):
        super().__init__()
        out_features, in_features = weight.shape
        if layout not in LAYOUTS or groups < 1 or out_features % groups:
            raise ValueError(f"cannot lay out a ({out_features}, {in_features}) weight as {groups} x {layout}")
        self.in_features, self.out_features, self.groups, self.layout = in_features, out_features, groups, layout
        slices = weight.detach().reshape(groups, out_features // groups, in_features)  # (g, out/g, in)
        stored = slices.contiguous() if layout == "rows" else slices.transpose(1, 2).contiguous()
        # the (g, in, out/g) operand bmm takes, a view of the stored layout; one slice: the (in, out) matrix
        operand = stored.transpose(1, 2) if layout == "rows" else stored
        self.register_buffer("operand", operand[0] if groups == 1 else operand)
        if bias is not None:
            bias = bias.detach().clone() if groups == 1 else bias.detach().reshape(groups, 1, -1).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.groups == 1:  # one matrix product, whichever side of it is contiguous
            y = torch.mm(rows, self.operand) if self.bias is None else torch.addmm(self.bias, rows, self.operand)
            return y.view(*x.shape[:-1], self.out_features)
        rows = rows.expand(self.groups, -1, -1)  # (g, n, in), no copy
        y = torch.bmm(rows, self.operand) if self.bias is None else torch.baddbmm(self.bias, rows, self.operand)
        return y.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)  # (g, n, out/g) -> (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}, " \
               f"layout={self.layout}, bias={self.bias is not None}"


def choose_layout(out_features: int, in_features: int, *, threads: int) -> tuple[int, str]:
    """(groups, layout) for an fp32 weight: one slice of output features per thread, each stored
    with its longer side contiguous (a matrix small enough to sit in cache is not split: there
    the threads' hand-off costs more than it saves). The rule the timings in bench/layout.py gave at every
    decode shape of the presets (batch 1 and 8, one and two threads); see the module docstring."""
    split = threads > 1 and out_features % threads == 0 and out_features * in_features >= MIN_SPLIT
    groups = threads if split else 1
    return groups, "columns" if out_features // groups >= in_features else "rows"


def lay_out(model: nn.Module) -> dict[str, tuple[int, str]]:
    """Replace every fp32 nn.Linear of a CPU model by a LaidOutLinear (choose_layout; the same
    outputs; a tied LM head gets its own copy when its layout differs from the table's).
    Returns {module name: (groups, layout)}. bf16 weights and other devices are left as they
    are: oneDNN's bf16 product already runs on every thread, and splitting measured no faster."""
    chosen = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or type(module.weight.data) is not torch.Tensor \
                or module.weight.device.type != "cpu" or module.weight.dtype != torch.float32:
            continue  # quantized (a tensor subclass), bf16, or not on the CPU: left as it is
        groups, layout = choose_layout(module.out_features, module.in_features, threads=torch.get_num_threads())
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LaidOutLinear(module.weight, module.bias, groups=groups, layout=layout))
        chosen[name] = (groups, layout)
    return chosen
