"""Linear layers stored for decoding on a CPU: in the layout each kernel streams fastest.

Decoding one token multiplies a few rows by every weight matrix, so its speed is how fast each
matrix streams from memory, and that depends on the kernel and on how the weight is stored.
Measured on a 2-core Zen 4 (`bench/layout.py`, docs/benchmarks.md "Weight layout" and
"oneDNN's packed weights"):

- One row in fp32: MKL's product runs on one thread and streams a matrix about twice as fast
  when its longer side is contiguous, and splitting the output features into one slice per
  thread, computed as one batched product (`bmm`, which runs the slices in parallel), adds up
  to 1.4x more: `LaidOutLinear`.
- Several rows in fp32, and any rows in bf16: oneDNN's inner product with the weight reordered
  once into oneDNN's own blocked format (what torch.compile's CPU "freezing" does to a frozen
  linear layer) is 1.5-2.3x faster than the laid-out MKL product at 8 and 32 rows, and in bf16
  it streams half the bytes at every batch: `PackedLinear`.

So at load each fp32 linear layer becomes a PackedLinear that hands single rows to a
LaidOutLinear (the weight is then held twice), and each bf16 one a PackedLinear alone; the
GELU after an MLP's up-projection becomes oneDNN's post-op of that product (one pass over its
output instead of two). They compute what the `nn.Linear` they replace computed (to rounding).
The checkpoint on disk is untouched; a laid-out model is for inference only.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class PackedLinear(nn.Module):
    """y = x W^T + b through oneDNN, W reordered once into oneDNN's blocked format; single rows
    go to `single` (a LaidOutLinear of the same weight) when one is given."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, single: nn.Module | None = None,
                 gelu: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # an opaque oneDNN tensor: a plain attribute, so it is neither state nor moved by .to()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.single = single
        self.gelu = gelu  # followed by GELU (tanh), computed by oneDNN as the product's post-op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single is not None and x.numel() == self.in_features:  # one row
            y = self.single(x)
            return F.gelu(y, approximate="tanh") if self.gelu else y
        post_op, algorithm = ("gelu", "tanh") if self.gelu else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, post_op, [], algorithm)

    def __deepcopy__(self, memo):  # an opaque tensor has no storage to copy: pack the weight again
        twin = memo[id(self)] = PackedLinear(self.packed.to_dense(), self.bias, gelu=self.gelu,
                                             single=copy.deepcopy(self.single, memo))
        return twin.train(self.training)

    def _apply(self, fn, recurse=True):
        """What .to() and friends do to the packed weight: another CPU dtype packs it again; the
        meta device (a retired model, serving/service.py) drops it; anything else is refused,
        since oneDNN's format is for this CPU (prepare a freshly loaded model instead)."""
        super()._apply(fn, recurse)  # the bias and the single-row copy
        target = fn(torch.empty(0, dtype=self.packed.dtype))  # where and in what dtype, without unpacking
        if target.device.type == "meta":
            self.packed = torch.empty(self.packed.shape, dtype=target.dtype, device="meta")
        elif target.device.type == "cpu" and target.dtype in (torch.float32, torch.bfloat16):
            if target.dtype != self.packed.dtype:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.packed.to_dense().to(target.dtype))
        else:
            raise ValueError(f"a layer packed for CPU inference cannot become {target.dtype} on {target.device}: "
                             "prepare a freshly loaded model instead")
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"dtype={str(self.packed.dtype).removeprefix('torch.')}, bias={self.bias is not None}, gelu={self.gelu}"


def choose_layout(out_features: int, in_features: int, *, threads: int) -> tuple[int, str]:
    """(groups, layout) of a LaidOutLinear for an fp32 weight: one slice of output features per
    thread, each stored with its longer side contiguous (a matrix small enough to sit in cache is
    not split: there the threads' hand-off costs more than it saves). The rule the timings in
    bench/layout.py gave at every decode shape of the presets (batch 1 and 8, one and two threads)."""
    split = threads > 1 and out_features % threads == 0 and out_features * in_features >= MIN_SPLIT
    groups = threads if split else 1
    return groups, "columns" if out_features // groups >= in_features else "rows"


@functools.cache
def can_pack(dtype: torch.dtype) -> bool:
    """Whether this torch's oneDNN packs and multiplies `dtype` weights here, and gets nn.Linear's
    numbers: checked once per process on a small layer (a build without oneDNN, or a private op
    that changed, then keeps the MKL layout rather than failing)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight, bias = (torch.randn(shape, generator=generator).to(dtype) for shape in ((48, 32), (48,)))
        x = torch.randn(3, 32, generator=generator).to(dtype)
        got = PackedLinear(weight, bias)(x)
    except RuntimeError:
        return False
    return got.shape == (3, 48) and torch.allclose(got.float(), F.linear(x, weight, bias).float(),
                                                   rtol=2e-2, atol=2e-2)


def lay_out(model: nn.Module) -> dict[str, nn.Module]:
    """Replace every fp32 or bf16 nn.Linear of a CPU model by the fastest layout for decoding
    (module docstring): fp32, a PackedLinear with a LaidOutLinear for single rows (choose_layout);
    bf16, a PackedLinear; an MLP's GELU becomes its up-projection's post-op. A tied LM head gets
    its own copy. Where oneDNN cannot pack, fp32 layers become LaidOutLinears and bf16 ones stay.
    Quantized weights (tensor subclasses) and other devices are left as they are. Returns
    {module name: its replacement}."""
    chosen = {}
    threads = torch.get_num_threads()
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or type(module.weight.data) is not torch.Tensor \
                or module.weight.device.type != "cpu" or module.weight.dtype not in (torch.float32, torch.bfloat16):
            continue  # quantized (a tensor subclass), another dtype, or not on the CPU: left as it is
        single = None
        if module.weight.dtype == torch.float32:
            groups, layout = choose_layout(module.out_features, module.in_features, threads=threads)
            single = LaidOutLinear(module.weight, module.bias, groups=groups, layout=layout)
        if can_pack(module.weight.dtype):
            replacement = PackedLinear(module.weight, module.bias, single=single)
        elif single is not None:
            replacement = single
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        act = getattr(parent, "act", None)
        if attr == "up" and isinstance(replacement, PackedLinear) and isinstance(act, nn.GELU) \
                and act.approximate == "tanh":  # an MLP's up-projection: its GELU becomes the product's post-op
            replacement.gelu, parent.act = True, nn.Identity()
        setattr(parent, attr, replacement)
        chosen[name] = replacement
    return chosen
