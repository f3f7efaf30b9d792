"""How the GPT is sharded, kept apart from the model itself (as torchtitan does)."""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from lightning_llm.model import GPT


def shard(model: GPT, mesh: DeviceMesh) -> None:
    """FSDP2: each block is its own unit, so only one block's full weights exist at a time in
    forward and backward; the embeddings, final norm and (tied) head form the root unit."""
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
