"""llm compress (quantization, pruning with recovery) and llm distill: artifacts that round-trip,
smaller models that run and recover, a distillation whose loss falls, and bad input refused in
one line with nothing written."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import LLM, TINY, compose_config, llm, llm_env

from lightning_llm.errors import UserError
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact

TINY_RUN = [*TINY, "trainer.precision=32-true", "callbacks.samples.max_new_tokens=10"]
MEASURE = ["measure.max_tokens=4000", "measure.new_tokens=4", "measure.repeats=1", "measure.batch_sizes=[1,2]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_root, prepared):
    """A tiny trained run (gpt-nano, 30 steps): the model every test compresses."""
    from lightning_llm.stages.train import train

    run_dir = tmp_path_factory.mktemp("compress-run")
    train(compose_config("train", [*TINY_RUN, f"paths.run_dir={run_dir}", f"paths.data_cache={cache_root}"]))
    return run_dir


def batches(prepared, block_size: int, count: int = 4):
    from lightning_llm.compress.prune import sample_batches

    return sample_batches(prepared.tokens("val"), block_size=block_size, batch_size=16, count=count, seed=3)


def mean_loss(model, data) -> float:
    with torch.no_grad():
        return sum(model(x, y)[1].item() for x, y in data) / len(data)


@pytest.mark.parametrize("scheme", ["bf16", "fp16", "int8_weight_only", "int8_dynamic"])
def test_quantized_artifact_round_trips_with_the_same_logits(trained, tmp_path, scheme):
    from lightning_llm.compress import quantize
    from lightning_llm.compress.quantize import manifest_entry

    original = load_artifact(trained)
    model = quantize(original.model, scheme)
    x = torch.randint(0, model.config.vocab_size, (2, model.config.block_size),
                      generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(x, every_position=True)[0]
    manifest = new_manifest(produced_by="test", tokenizer_json=original.tokenizer.to_str(),
                            quantization=manifest_entry(scheme, model))
    save_artifact(model, original.tokenizer.to_str(), tmp_path / "q", manifest=manifest)
    loaded = load_artifact(tmp_path / "q")  # no flag: the manifest says how to rebuild it
    with torch.inference_mode():
        after = loaded.model(x, every_position=True)[0]
    assert loaded.manifest["quantization"]["scheme"] == scheme
    assert after.dtype == before.dtype and torch.equal(after, before)
    assert loaded.model.lm_head.weight is loaded.model.tok_emb.weight  # still tied
    full = (trained / "model" / "model.safetensors").stat().st_size
    saved = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert saved < full * (0.55 if scheme in ("bf16", "fp16") else 0.5)
    with torch.inference_mode():
        reference = original.model(x, every_position=True)[0]
    # close to the float model: a small mean error and the same top token almost everywhere (the
    # largest single error depends on the input: 0.03-0.7 for int8 on this tiny model, never the top token)
    assert torch.isfinite(before).all() and before.float().sub(reference).abs().mean() < 0.02
    assert (before.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("scheme", ["bf16", "int8_weight_only"])
def test_speed_is_timed_as_served_and_leaves_the_models_untouched(trained, scheme):
    from lightning_llm.compress import quantize
    from lightning_llm.compress.measure import as_served
    from lightning_llm.model.layout import LaidOutLinear, PackedLinear

    original = load_artifact(trained).model
    compressed = quantize(original, scheme)
    served = {name: as_served(model) for name, model in (("original", original), (scheme, compressed))}
    laid = (PackedLinear, LaidOutLinear)
    assert isinstance(served["original"].blocks[0].mlp.up, laid)  # fp32: laid out as llm generate runs it
    assert isinstance(served[scheme].blocks[0].mlp.up, laid) == (scheme == "bf16")  # int8 layers stay torchao's
    assert type(original.blocks[0].mlp.up) is torch.nn.Linear and type(compressed.blocks[0].mlp.up) is torch.nn.Linear
    x = torch.randint(0, original.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for model, copy in ((original, served["original"]), (compressed, served[scheme])):
            expected, got = model(x, every_position=True)[0].float(), copy(x, every_position=True)[0].float()
            assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


def test_int4_on_this_cpu_is_refused_with_the_reason():
    from lightning_llm.compress import check_scheme

    with pytest.raises(UserError, match="int4_weight_only needs a CUDA GPU"):
        check_scheme("int4_weight_only", "cpu")
    with pytest.raises(UserError, match="unknown scheme"):
        check_scheme("int3", "cpu")


@pytest.mark.parametrize("kind", ["heads", "mlp"])
def test_structured_pruning_shrinks_the_model_and_recovery_lowers_its_loss(trained, prepared, tmp_path, kind):
    from lightning_llm.compress import importance, removed_count, structured
    from lightning_llm.stages.compress import recover

    original = load_artifact(trained).model
    config = original.config
    data = batches(prepared, config.block_size)
    scores = importance(original, kind, method="taylor", batches=batches(prepared, config.block_size, 2))
    pruned, kept = structured(original, kind, scores, removed_count(kind, config, amount=0.5))
    if kind == "heads":
        assert pruned.config.n_head == config.n_head // 2 and pruned.config.head_dim == config.head_dim
        assert pruned.blocks[0].attn.qkv.weight.shape[0] < original.blocks[0].attn.qkv.weight.shape[0]
    else:
        assert pruned.config.mlp_hidden == config.mlp_hidden // 2
        assert pruned.blocks[0].mlp.up.weight.shape[0] == config.mlp_hidden // 2
    assert pruned.num_params() < original.num_params()
    assert len(kept) == config.n_layer
    unrecovered = mean_loss(pruned, data)
    cfg = compose_config("compress", ["method=prune", f"prune.kind={kind}", "prune.recover_steps=25",
                                      f"paths.run_dir={tmp_path}", "trainer.precision=32-true",
                                      "optim.optimizer.lr=3e-3", "val_windows=8"])
    recovered, info = recover(cfg, pruned, prepared, load_artifact(trained).tokenizer.to_str(), hold_zeros=False)
    after = mean_loss(recovered, data)
    assert info["steps"] == 25
    assert recovered.config == pruned.config
    assert torch.isfinite(torch.tensor(after)) and after < unrecovered
    # the smaller config saves and loads like any model folder
    save_artifact(recovered, load_artifact(trained).tokenizer.to_str(), tmp_path / "m",
                  manifest=new_manifest(produced_by="test", tokenizer_json="{}"))
    assert load_artifact(tmp_path / "m").config == pruned.config


def test_magnitude_pruning_keeps_its_zeros_through_recovery(trained, prepared, tmp_path):
    from lightning_llm.compress import magnitude
    from lightning_llm.compress.prune import sparsity
    from lightning_llm.stages.compress import recover

    pruned = magnitude(load_artifact(trained).model, 0.4)
    assert abs(sparsity(pruned) - 0.4) < 0.01
    cfg = compose_config("compress", ["method=prune", "prune.kind=magnitude", "prune.recover_steps=5",
                                      f"paths.run_dir={tmp_path}", "trainer.precision=32-true", "val_windows=4"])
    recovered, _ = recover(cfg, pruned, prepared, load_artifact(trained).tokenizer.to_str(), hold_zeros=True)
    assert abs(sparsity(recovered) - 0.4) < 0.01
    assert set(recovered.state_dict()) == set(pruned.state_dict())  # the masks are folded back in


def test_kl_term_is_zero_when_the_student_is_the_teacher(trained, prepared):
    from lightning_llm.training.distill import DistillationModel

    teacher = load_artifact(trained)
    module = DistillationModel(teacher.config.to_dict(), teacher.tokenizer.to_str(), teacher=teacher.model,
                               temperature=2.0, alpha=0.5)
    module.model.load_state_dict(teacher.model.state_dict())
    x, y = batches(prepared, teacher.config.block_size, 1)[0]
    loss, kl, ce = module.losses(x, y)
    assert abs(kl.item()) < 1e-5
    assert loss.item() == pytest.approx(0.5 * ce.item(), rel=1e-4)
    assert not any(k.startswith("teacher") for k in module.state_dict())  # checkpoints hold the student alone
    fresh = DistillationModel(teacher.config.to_dict(), teacher.tokenizer.to_str(), teacher=teacher.model)
    assert fresh.losses(x, y)[1].item() > 0.01


def test_compress_quantize_writes_a_folder_that_eval_and_generate_load(trained, tmp_path):
    from lightning_llm.evaluation import evaluate
    from lightning_llm.stages.compress import compress
    from lightning_llm.stages.eval import eval_config

    run = tmp_path / "run"
    compress(compose_config("compress", [f"ckpt={trained}", "method=quantize", "quantize.scheme=int8_weight_only",
                                         f"paths.run_dir={run}", *MEASURE]))
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    assert manifest["produced_by"] == "compress" and manifest["quantization"]["scheme"] == "int8_weight_only"
    assert manifest["parent"].startswith(str(trained))
    parent = json.loads((trained / "model" / "manifest.json").read_text())
    assert manifest["template"] == parent["template"]  # the parent's chat template goes with it
    assert manifest["chat_template"] == parent["chat_template"]
    report = (run / "compress" / "report.md").read_text()
    assert "int8_weight_only vs original" in report and "val bits per byte" in report
    rows = json.loads((run / "compress" / "metrics.json").read_text())["rows"]
    assert rows["int8_weight_only"]["file_bytes"] < rows["original"]["file_bytes"] * 0.6  # gpt-nano: mostly embedding
    assert abs(rows["int8_weight_only"]["val_bpb"] / rows["original"]["val_bpb"] - 1) < 0.01
    assert json.loads((run / "run.json").read_text())["data"]["dir"]  # what llm eval reads
    out = llm(["generate", f"ckpt={run}", "prompt=ROMEO:", "max_new_tokens=8"], tmp_path)
    assert out.stdout.startswith("ROMEO:")  # no flag, and no torchao import noise in front
    evaluate(eval_config(compose_config("eval", [f"ckpt={run / 'model'}", "tasks=[lm]", "lm.max_tokens=3000"])))
    assert json.loads((run / "eval" / "metrics.json").read_text())["lm"]["splits"]["val"]["bpb"] > 0


def test_distill_loss_falls_and_logs_its_kl_term(trained, tmp_path, cache_root):
    from lightning_llm.stages.distill import distill
    from lightning_llm.templates import load_template

    # the teacher: the trained model as a folder of its own whose default chat template is not the plain one
    source = load_artifact(trained)
    system = load_template("system")
    teacher = save_artifact(source.model, source.tokenizer_json, tmp_path / "teacher", manifest={
        **source.manifest, "template": system.name, "chat_template": system.source})
    run = tmp_path / "run"
    distill(compose_config("distill", [f"teacher={teacher}", *TINY_RUN, "model.n_layer=1", "trainer.max_steps=40",
                                       f"paths.data_cache={cache_root}", f"paths.run_dir={run}", *MEASURE]))
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(float(r["train/kl"]) >= 0 for r in rows)
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    assert manifest["produced_by"] == "distill" and manifest["parent"] == str(teacher)
    assert (manifest["template"], manifest["chat_template"]) == ("system", system.source)  # the teacher's
    assert load_artifact(run / "model").config.n_layer == 1
    assert "student vs original" in (run / "compress" / "report.md").read_text()


BAD = {  # through the CLI: exit code 2 and one line
    "unknown method": (["compress", "method=shrink"], "method='shrink'"),
    "int4 on a CPU": (["compress", "quantize.scheme=int4_weight_only"], "needs a CUDA GPU"),
    "tokenizer mismatch": (["distill", "tokenizer=bpe", "model.n_layer=1"], "tokenizer config differs"),
}
BAD_IN_PROCESS = {  # the same checks, in process (the CLI turns a UserError into that line)
    "unknown scheme": (["quantize.scheme=int3"], "unknown scheme 'int3'"),
    "amount outside (0, 1)": (["method=prune", "prune.amount=1.5"], "must be in (0, 1)"),
    "amount that removes every head": (["method=prune", "prune.kind=heads", "prune.amount=0.9"], "at least one must remain"),
    "more heads than exist": (["method=prune", "prune.kind=heads", "prune.count=5"], "each layer has 2"),
    "unknown kind": (["method=prune", "prune.kind=channels"], "kinds are magnitude, heads, mlp"),
}


def test_bad_input_fails_in_one_line_and_writes_nothing(trained, tmp_path):
    from lightning_llm.stages.compress import compress

    procs = {}
    for name, (args, _) in BAD.items():  # started together: each spends most of its time importing
        key = "teacher" if args[0] == "distill" else "ckpt"
        procs[name] = subprocess.Popen([*LLM, *args, f"{key}={trained}"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=llm_env(tmp_path / "out"))
    for i, (name, (args, message)) in enumerate(BAD_IN_PROCESS.items()):
        with pytest.raises(UserError, match=re.escape(message)):
            compress(compose_config("compress", [f"ckpt={trained}", *args, f"paths.run_dir={tmp_path / str(i)}"]))
        assert not (tmp_path / str(i)).exists(), name
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:") and BAD[name][1] in lines[0], (name, stderr)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert written == []
    assert not any(Path(trained).glob("compress*"))
