"""Review of llm compress: settings refused in one line before anything is read or written, the
SwiGLU channel score, and a report that shows every batch size timed and is written whole."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import compose_config

from lightning_llm.compress import importance
from lightning_llm.compress import report as compress_report
from lightning_llm.errors import UserError
from lightning_llm.model import GPT, GPTConfig

BAD = {
    "a device that is not there": (["device=tpu9"], "device=tpu9"),
    "measure.new_tokens not a number": (["measure.new_tokens=abc"], "measure: max_tokens"),
    "measure.batch_sizes not a list": (["measure.batch_sizes=3"], "batch_sizes (a list)"),
    "no taylor batches": (["method=prune", "prune.kind=heads", "prune.importance_batches=0"],
                          "prune.importance_batches must be a whole number of at least 1"),
    "batch_size 0": (["method=prune", "batch_size=0"], "batch_size must be a whole number of at least 1"),
    "a bool count": (["method=prune", "prune.kind=heads", "prune.count=true"], "prune.count=True"),
    "max_bpb_increase not a number": (["quantize.goal=size", "quantize.max_bpb_increase=abc"],
                                      "quantize.max_bpb_increase must be a number"),
}
if not torch.cuda.is_available():
    BAD["cuda on a machine without one"] = (["device=cuda"], "no CUDA GPU is visible")


@pytest.mark.parametrize("name", BAD)
def test_bad_settings_fail_in_one_line_before_anything_is_read_or_written(tmp_path, name):
    from lightning_llm.stages.compress import compress

    args, message = BAD[name]
    # the checkpoint is never read: every setting is checked first
    with pytest.raises(UserError, match=re.escape(message)) as err:
        compress(compose_config("compress", ["ckpt=/nonexistent/run", *args, f"paths.run_dir={tmp_path / 'run'}"]))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_weight_norm_scores_a_swiglu_channel_by_its_gate_and_its_value_rows():
    """silu(gate) * value: a channel whose value rows are zero outputs nothing, however large its gate."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=32, mlp="swiglu",
                          position="rope", norm="rmsnorm"))
    hidden = model.config.mlp_hidden
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.up.weight[3] *= 10  # the gate row of channel 3
            block.mlp.up.weight[hidden + 3] = 0  # its value row: the channel is silent
            block.mlp.down.weight[:, 3] *= 10
    scores = importance(model, "mlp", method="weight_norm")
    assert all(int(s.argmin()) == 3 for s in scores)


def test_the_report_shows_every_batch_size_timed_and_is_written_whole(tmp_path, monkeypatch):
    rows = {"original": {"parameters": 100, "tokens_per_s_b1": 50.0, "tokens_per_s_b2": 90.0, "val_bpb": 2.0},
            "int8": {"parameters": 100, "tokens_per_s_b1": 60.0, "tokens_per_s_b2": 99.0, "val_bpb": 2.02}}
    table = compress_report.comparison_table(rows)
    assert "generation tokens/s, batch 1 | 50 | 60 | 1.20x" in table
    assert "generation tokens/s, batch 2 | 90 | 99 | 1.10x" in table
    compress_report.write_report(tmp_path / "compress", title="t", details=["d"], rows=rows, record={"k": 1})
    assert json.loads((tmp_path / "compress" / "metrics.json").read_text())["k"] == 1

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(compress_report.json, "dumps", broken)  # metrics.json fails after report.md
    with pytest.raises(OSError):
        compress_report.write_report(tmp_path / "again", title="t", details=["d"], rows=rows)
    assert not (tmp_path / "again").exists()


def test_the_original_file_size_is_only_read_from_a_folder_that_holds_the_weights(tmp_path):
    """A LoRA adapter folder (adapter_model.safetensors, no model.safetensors) has no file size to
    compare: the report shows none instead of failing after the compressed model was written."""
    from lightning_llm.model.io import Artifact
    from lightning_llm.stages.compress import original_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert original_file(Artifact(model=None, tokenizer=None, manifest={}, path=adapter)) is None
    (adapter / "model.safetensors").write_bytes(b"")
    assert original_file(Artifact(model=None, tokenizer=None, manifest={}, path=adapter)) == adapter


@pytest.mark.parametrize("options", [dict(), dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False)])
@pytest.mark.parametrize("kind", ["heads", "mlp"])
def test_a_structurally_pruned_model_computes_the_original_with_those_units_silenced(kind, options):
    """Pruning is exact: the smaller model's logits are the original's with the removed heads' (or
    channels') columns of the output projection set to zero."""
    from lightning_llm.compress import structured

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases and norms off their init, so misplaced rows show
    scores = [torch.randn(4 if kind == "heads" else model.config.mlp_hidden) for _ in model.blocks]
    remove = 2 if kind == "heads" else 5
    pruned, kept = structured(model, kind, scores, remove)
    silenced = GPT(model.config).eval()
    silenced.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, keep in zip(silenced.blocks, kept):
            width = model.config.head_dim if kind == "heads" else 1
            out = block.attn.proj if kind == "heads" else block.mlp.down
            gone = sorted(set(range(out.weight.shape[1] // width)) - set(keep))
            for unit in gone:
                out.weight[:, unit * width:(unit + 1) * width] = 0
            assert len(gone) == remove
    idx = torch.randint(40, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(pruned(idx, every_position=True)[0], silenced(idx, every_position=True)[0], atol=1e-5)
