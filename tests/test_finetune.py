"""llm finetune: LoRA trains the adapter only and its merged export is the adapter model; a full
fine-tune lowers the new domain's loss; instruction data carries loss on the responses only; bad
input is one line and writes nothing. A tiny random base model on the built-in corpus's
tokenizer stands in for a trained one: what is tested is the mechanics, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, llm

from lightning_llm.errors import UserError

NEW_DATA = ["data=shakespeare", "data.genres=[poem]", "data.name=poems"]  # 5 works held out as the "new domain"
FAST = ["batch_size=8", "trainer.max_steps=12", "trainer.val_check_interval=6", "trainer.log_every_n_steps=1",
        "val_windows=8", "finetune.eval_windows=8", "callbacks.samples.max_new_tokens=8", "optim.optimizer.lr=1e-2",
        "optim.scheduler.warmup_steps=2", "~callbacks.early_stopping"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, prepared):
    """A gpt-nano model folder on the default corpus's tokenizer, its manifest naming that data."""
    from lightning_llm.model import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=prepared.meta["vocab_size"], block_size=64, n_layer=2, n_head=2, n_embd=32)
    tokenizer_json = prepared.tokenizer_path.read_text()
    folder = tmp_path_factory.mktemp("base") / "model"
    manifest = new_manifest(produced_by="test", tokenizer_json=tokenizer_json, data_hash=prepared.dir.name)
    return save_artifact(GPT(config), tokenizer_json, folder, manifest=manifest)


def finetune_in_process(tmp_path, cache_root, base, overrides):
    from lightning_llm.stages.finetune import finetune

    run_dir = tmp_path / "run"
    cfg = compose_config("finetune", [f"base={base}", *FAST, f"paths.data_cache={cache_root}",
                                      f"paths.output_root={tmp_path}", f"paths.run_dir={run_dir}", *overrides])
    finetune(cfg)
    return run_dir, json.loads((run_dir / "run.json").read_text())


def write_records(path: Path, n: int = 24) -> Path:
    lines = [json.dumps({"prompt": f"Say the number {i}.", "response": f"The number is {i}."}) for i in range(n - 4)]
    lines += [json.dumps({"messages": [{"role": "system", "content": "Answer briefly."},
                                       {"role": "user", "content": f"Name {i}?"},
                                       {"role": "assistant", "content": f"Name {i}."},
                                       {"role": "user", "content": "Again?"},
                                       {"role": "assistant", "content": "Again."}]}) for i in range(4)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lora_trains_only_the_adapter_and_its_merged_export_is_the_adapter_model(tmp_path, cache_root, base):
    from peft import PeftModel

    from lightning_llm.model.io import load_artifact, read_checkpoint

    run_dir, run = finetune_in_process(tmp_path, cache_root, base, NEW_DATA + [
        "finetune.method=lora", "finetune.lora.rank=4", "finetune.lora.dropout=0.0"])
    base_model = load_artifact(base).model
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    lora_keys = [k for k in state if ".lora_" in k]
    assert len(lora_keys) == 2 * 4 * 2  # A and B on qkv, proj, up, down of both blocks
    assert any(state[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # B starts at zero: it trained
    for name, weight in base_model.state_dict().items():  # every base weight bit-identical after training
        key = "model." + name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if any(f".{t}." in name for t in ("qkv", "proj", "up", "down")) else "model." + name
        assert torch.equal(state[key], weight), name
    assert run["finetune"]["trainable_parameters"] == sum(state[k].numel() for k in lora_keys)

    adapter_model = PeftModel.from_pretrained(load_artifact(base).model, str(run_dir / "adapter")).eval()
    exported = load_artifact(run_dir / "model")
    assert exported.manifest["parent"] == str(base) and exported.manifest["produced_by"] == "finetune"
    assert exported.manifest["finetune"]["lora"]["rank"] == 4
    idx = torch.randint(0, base_model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapter_model(idx, every_position=True)[0]
        assert not torch.allclose(expected, base_model(idx, every_position=True)[0], atol=1e-4)
        torch.testing.assert_close(exported.model(idx, every_position=True)[0], expected, atol=1e-5, rtol=1e-5)
    assert (run_dir / "forgetting.md").is_file() and (run_dir / "plots" / "forgetting.png").stat().st_size > 0


def test_a_full_fine_tune_lowers_the_new_domain_loss_and_reports_both_domains(tmp_path, cache_root, base, prepared):
    run_dir, run = finetune_in_process(tmp_path, cache_root, base, NEW_DATA + ["finetune.method=full"])
    new, old = run["finetune"]["losses"]
    assert new["domain"] == "new" and old["domain"] == "base" and prepared.dir.name in old["data"]
    assert new["after"] < new["before"] - 0.3  # a random model learns the characters in a dozen steps
    assert run["finetune"]["trainable_parameters"] == run["finetune"]["parameters"]
    data = json.loads((Path(run["data"]["dir"]) / "meta.json").read_text())
    assert data["tokenizer"].startswith("given") and (Path(run["data"]["dir"]) / "tokenizer.json").read_text() \
        == prepared.tokenizer_path.read_text()  # prepared with the base's tokenizer, byte for byte
    assert Path(run["data"]["dir"]).name != prepared.dir.name
    table = (run_dir / "forgetting.md").read_text()
    assert f"{new['before']:.4f}" in table and f"{old['after']:.4f}" in table


def test_instruction_records_train_on_response_tokens_only(base):
    from lightning_llm.finetune.instruction import IGNORE, read_conversations, render
    from lightning_llm.model.io import load_artifact
    from lightning_llm.serving.text import special_tokens
    from lightning_llm.templates import load_template

    path = write_records(Path(base).parent / "records.jsonl")
    artifact = load_artifact(base)
    conversations = read_conversations([path])
    rendered = render(conversations, tokenizer=artifact.tokenizer, template=load_template("plain"),
                      specials=special_tokens(artifact.tokenizer), block_size=256)
    assert len(rendered.examples) == 24 and rendered.truncated == rendered.dropped == 0
    for example, (_, messages) in zip(rendered.examples, conversations):
        x, y = example.inputs_targets()
        trained = artifact.tokenizer.decode(y[y != IGNORE].tolist(), skip_special_tokens=False)
        responses = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "assistant")
        assert trained == responses + "<|endoftext|>"  # every response token, then the stop; nothing else
        prompt_text = artifact.tokenizer.decode(x[y == IGNORE].tolist())
        assert "USER:" in prompt_text and ("Say" in prompt_text or "Name" in prompt_text)
        assert torch.equal(x[1:], torch.where(y[:-1] == IGNORE, x[1:], y[:-1]))  # targets are the next tokens


def test_instruction_fine_tune_end_to_end_exporting_the_adapter_alone(tmp_path, cache_root, base):
    from peft import PeftModel

    from lightning_llm.model.io import load_artifact

    path = write_records(tmp_path / "records.jsonl")
    run_dir, run = finetune_in_process(tmp_path, cache_root, base, [
        "data=jsonl", f"data.paths=[{path}]", "finetune.format=instruction", "finetune.method=lora",
        "finetune.lora.rank=2", "finetune.lora.dropout=0.0", "finetune.export=adapter"])
    assert run["data"]["format"] == "instruction" and run["data"]["held_out"] == 2
    new, _ = run["finetune"]["losses"]
    assert new["after"] < new["before"]
    manifest = json.loads((run_dir / "model" / "manifest.json").read_text())
    assert manifest["template"] == "plain" and manifest["data_hash"].startswith("jsonl-instruction-")
    assert manifest["adapter"] == "peft-lora" and not (run_dir / "model" / "model.safetensors").exists()
    exported = load_artifact(run_dir)  # the run dir means model/: the adapter, merged into its parent on load
    assert exported.path == run_dir / "model" and exported.manifest["parent"] == str(base)
    adapter_model = PeftModel.from_pretrained(load_artifact(base).model, str(run_dir / "adapter")).eval()
    idx = torch.randint(0, exported.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(exported.model(idx, every_position=True)[0],
                                   adapter_model(idx, every_position=True)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["missing base", "bad method", "tokenizer mismatch", "unknown lora target"])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, cache_root, base, case):
    from lightning_llm.data import DataConfig, TokenizerConfig, prepare

    overrides = NEW_DATA + {"missing base": [f"base={tmp_path / 'nope'}"], "bad method": ["finetune.method=qlora"],
                            "unknown lora target": ["finetune.method=lora", "finetune.lora.target_modules=[lm_head]"],
                            "tokenizer mismatch": []}[case]
    if case == "tokenizer mismatch":
        other = prepare(DataConfig(name="poems_other", genres=["poem"], workers=1), TokenizerConfig(vocab_size=40),
                        tmp_path / "other")
        overrides.append(f"finetune.base_data={other.dir}")
    message = {"missing base": "base=.* does not exist", "bad method": "finetune.method must be one of",
               "tokenizer mismatch": "another tokenizer", "unknown lora target": "name no linear layer"}[case]
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=message):
        finetune_in_process(tmp_path, cache, base, overrides)
    assert not (tmp_path / "run").exists() and not cache.exists()


def test_a_malformed_jsonl_line_is_one_line_from_the_cli_and_nothing_is_written(tmp_path, base):
    path = write_records(tmp_path / "records.jsonl")
    path.write_text(path.read_text() + '{"prompt": "no response"\n')
    outputs = tmp_path / "outputs"
    result = llm(["finetune", f"base={base}", "data=jsonl", f"data.paths=[{path}]", "finetune.format=instruction"],
                 outputs, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}:25: not JSON ("), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not any(p.is_file() for p in outputs.rglob("*"))


def test_text_the_base_tokenizer_cannot_read_is_one_warning_line_before_training(base, caplog):
    from lightning_llm.finetune.config import FinetuneConfig
    from lightning_llm.finetune.instruction import render
    from lightning_llm.model.io import load_artifact
    from lightning_llm.serving.text import special_tokens
    from lightning_llm.stages.finetune import warn_unknown
    from lightning_llm.templates import load_template

    artifact = load_artifact(base)
    conversations = [("a.jsonl:1", [{"role": "user", "content": "Was ist λόγος?"},
                                    {"role": "assistant", "content": "Das Wort: λόγος, λόγος."}])]
    rendered = render(conversations, tokenizer=artifact.tokenizer, template=load_template("plain"),
                      specials=special_tokens(artifact.tokenizer), block_size=256)
    assert rendered.unknown == 15 and rendered.unknown_chars[:1] == ["λ"]
    with caplog.at_level("WARNING", logger="lightning_llm"):
        health = warn_unknown(rendered.unknown, rendered.tokens, FinetuneConfig(), chars=rendered.unknown_chars)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "never saw" in lines[0] and "'λ'" in lines[0] and "\n" not in lines[0]
    assert health["unknown_rate"] == pytest.approx(15 / rendered.tokens, abs=1e-6)
    caplog.clear()
    warn_unknown(0, 1000, FinetuneConfig())  # text it reads well: nothing said
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_builtin_corpus_selects_works_and_genres():
    from lightning_llm.data.shakespeare import WORKS, shakespeare_files

    histories = {work for work, _, _ in shakespeare_files(["gutenberg", "folio"], genres=["history"])}
    assert histories == {w for w, (genre, _, _) in WORKS.items() if genre == "history"} and len(histories) == 10
    assert {w for w, _, _ in shakespeare_files(["gutenberg"], works=["hamlet", "lear"])} == {"hamlet", "lear"}
    with pytest.raises(UserError, match="unknown \\['romance'\\]; choose from comedy, history, poem, tragedy"):
        shakespeare_files(["gutenberg"], genres=["romance"])
    with pytest.raises(UserError, match="select no work together"):
        shakespeare_files(["gutenberg"], works=["hamlet"], genres=["comedy"])
