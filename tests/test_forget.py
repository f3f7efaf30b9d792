"""Forgetting on purpose: finetune.forget raises the forget text's held-out loss while the retained
text's holds; update.remove's gate refuses a removal that wrecks the rest and keeps the live version;
the forget terms stay bounded and finite at p -> 0 and p -> 1; bad forget input is one line. A tiny
base, trained for a few seconds on the built-in corpus (so it has something to forget), stands in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, llm

from lightning_llm.errors import UserError
from lightning_llm.model.io import read_manifest

KEEP = ["data=shakespeare", "data.genres=[comedy]", "data.name=comedies"]  # the retain set (data=)
FAST = ["batch_size=8", "trainer.max_steps=16", "trainer.val_check_interval=8", "trainer.log_every_n_steps=1",
        "val_windows=8", "finetune.eval_windows=8", "callbacks.samples.max_new_tokens=8", "optim.optimizer.lr=3e-3",
        "optim.scheduler.warmup_steps=2", "~callbacks.early_stopping"]


@pytest.fixture(scope="module")
def made_up(tmp_path_factory):
    """The text to forget: 12 documents of an invented language (30 made-up words in random order),
    as a data config for finetune.forget / update.remove. Easy to learn, and unlike Shakespeare."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("forget_bench", Path(__file__).parent.parent / "bench" / "forget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = bench.write_made_up(tmp_path_factory.mktemp("made_up"))  # the text bench/forget.py measures
    return f"{{source:text_files,paths:['{folder}'],name:made_up}}"


@pytest.fixture(scope="module")
def base(tmp_path_factory, prepared, cache_root, made_up):
    """A gpt-nano model folder trained 300 steps on the default corpus with the made-up text mixed in
    (a third of the steps): it knows the made-up language far better than Shakespeare."""
    from omegaconf import OmegaConf

    from lightning_llm.config import to_dataclass
    from lightning_llm.data import DataConfig, TokenizerConfig, prepare
    from lightning_llm.model import GPT, GPTConfig
    from lightning_llm.model.io import new_manifest, save_artifact

    tokenizer_json = prepared.tokenizer_path.read_text()
    made = prepare(to_dataclass(DataConfig, OmegaConf.create(compose_value(made_up)), "made_up"), TokenizerConfig(),
                   cache_root, tokenizer_json=tokenizer_json)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=prepared.meta["vocab_size"], block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for step in range(300):
        tokens = made.tokens("train") if step % 3 == 0 else prepared.tokens("train")
        starts = rng.integers(0, len(tokens) - 65, 16)
        window = torch.from_numpy(np.stack([tokens[s:s + 65] for s in starts]).astype(np.int64))
        _, loss = model(window[:, :-1], window[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("base") / "model"
    manifest = new_manifest(produced_by="test", tokenizer_json=tokenizer_json, data_hash=prepared.dir.name)
    return save_artifact(model.eval(), tokenizer_json, folder, manifest=manifest)


def compose_value(override: str):
    """The value of a `key=<value>` override as Hydra parses it."""
    return compose_config("finetune", [f"finetune.forget={override}"]).finetune.forget


def finetune_in_process(tmp_path, cache_root, base, overrides):
    from lightning_llm.stages.finetune import finetune

    run_dir = tmp_path / "run"
    cfg = compose_config("finetune", [f"base={base}", *KEEP, *FAST, f"paths.data_cache={cache_root}",
                                      f"paths.output_root={tmp_path}", f"paths.run_dir={run_dir}", *overrides])
    finetune(cfg)
    return run_dir, json.loads((run_dir / "run.json").read_text())


def test_forgetting_raises_the_forget_texts_loss_while_the_kept_texts_holds(tmp_path, cache_root, base, made_up):
    run_dir, run = finetune_in_process(tmp_path, cache_root, base, [f"finetune.forget={made_up}"])
    losses = {r["domain"]: r for r in run["finetune"]["losses"]}
    assert set(losses) == {"new", "base", "forget"} and losses["forget"]["data"].startswith("made_up-")
    assert losses["forget"]["change"] > 0.3  # the made-up text's held-out loss rose
    assert losses["new"]["change"] < 0.05 and losses["base"]["change"] < 0.05  # the comedies (and the rest) held
    assert run["finetune"]["forget"] == {"data": losses["forget"]["data"].split()[0], "method": "unlikelihood",
                                         "weight": 1.0, "cap": round(math.log(base_vocab(base)), 4)}
    table = (run_dir / "forgetting.md").read_text()
    assert "| forget |" in table and "The forget text's should rise" in table
    assert (run_dir / "plots" / "forgetting.png").stat().st_size > 0
    # the exported model is the last step's weights: its val loss is what run.json records (what the
    # registry reads as the version's eval loss), not the best checkpoint's
    assert "best_val/loss" not in run["metrics"] and read_manifest(run_dir / "model")["checkpoint"] is None
    assert run["metrics"]["val/loss"] == pytest.approx(exported_val_loss(run_dir, run), abs=1e-4)


def exported_val_loss(run_dir, run) -> float:
    """The run's model/ folder's loss on the validation windows of data= (val_windows=8, as FAST sets)."""
    from lightning_llm.data import PreparedData
    from lightning_llm.finetune.forgetting import mean_loss
    from lightning_llm.model.io import load_artifact
    from lightning_llm.training.datamodule import FixedWindows

    model = load_artifact(str(run_dir / "model")).model
    windows = FixedWindows(PreparedData(Path(run["data"]["dir"])).tokens("val"), model.config.block_size, 8)
    x, y = zip(*[windows[i] for i in range(len(windows))])
    return mean_loss(model, [(torch.stack(x), torch.stack(y))])


def base_vocab(folder) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def test_the_forget_terms_are_bounded_and_finite_when_p_goes_to_0_or_1():
    from lightning_llm.finetune.forget import UNLIKELIHOOD_CAP, ascent_loss, forget_step, unlikelihood_loss

    targets = torch.tensor([[1, 2, -1]])
    for scale in (1e4, -1e4, 0.0):  # p(target) -> 1, -> 0, uniform
        logits = torch.zeros(1, 3, 5)
        logits[0, 0, 1] = logits[0, 1, 2] = scale
        logits.requires_grad_(True)
        for loss, low, high in ((unlikelihood_loss(logits, targets), 0.0, UNLIKELIHOOD_CAP + 1e-5),  # float32
                                (ascent_loss(logits, targets, cap=3.0), -3.0, 0.0)):
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.isfinite(loss) and low <= loss.item() <= high and torch.isfinite(grad).all()
    uniform = torch.zeros(1, 3, 5)
    assert float(unlikelihood_loss(uniform, targets)) == pytest.approx(-math.log(1 - 1 / 5))
    assert float(ascent_loss(uniform, targets, cap=3.0)) == pytest.approx(-math.log(5))

    from lightning_llm.model import GPT, GPTConfig

    torch.manual_seed(0)  # minimising the unlikelihood term drives p(target) to 0 and stays finite
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=16))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = (torch.randint(0, 16, (2, 8)), torch.randint(0, 16, (2, 8)))
    for _ in range(60):
        loss, retain, term = forget_step(model, batch, batch, method="unlikelihood", weight=10.0, cap=2.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss) and 0 <= float(term) <= 14
    assert float(term) < 0.1


def test_unlikelihood_pushes_hardest_on_the_tokens_the_model_is_sure_of():
    """-log(1 - p)'s gradient with respect to the target's logit is p: 1 for a memorised token
    (p == 1 in float32), where its value is capped, not 0; and the value is exact at every p."""
    from lightning_llm.finetune.forget import UNLIKELIHOOD_CAP, unlikelihood_loss

    targets = torch.tensor([[1, 2, -1]])
    for lead in (1e4, 30.0, 5.0, 0.0, -5.0, -30.0):
        logits = torch.zeros(1, 3, 5)
        logits[0, 0, 1] = logits[0, 1, 2] = lead
        logits.requires_grad_(True)
        loss = unlikelihood_loss(logits, targets)
        (grad,) = torch.autograd.grad(loss, logits)
        p = math.exp(lead) / (math.exp(lead) + 4) if lead < 100 else 1.0
        exact = -math.log1p(-p) if p < 1 else math.inf  # log1p: exact where p is near 0
        assert float(loss) == pytest.approx(min(exact, UNLIKELIHOOD_CAP), rel=1e-5, abs=1e-30)
        # two targets carry loss: each position's gradient on its target logit is p / 2
        assert float(grad[0, 0, 1]) == pytest.approx(p / 2, rel=1e-5, abs=1e-30) and torch.isfinite(grad).all()
        assert float(grad[0, 0].sum()) == pytest.approx(0, abs=1e-6) and not grad[0, 2].any()  # ignored: none
    assert float(grad[0, 0, 1]) > 0  # at lead -30, p ~ 2e-14: it fades, but stays exact


def test_a_removal_that_wrecks_the_rest_is_refused_and_the_live_version_stays(tmp_path, cache_root, base, made_up,
                                                                               capsys):
    from lightning_llm.registry import Registry
    from lightning_llm.stages.update import update

    registry = Registry(tmp_path / "out", "demo")
    assert registry.promote(source=base, reason="first") == "v1"
    weights = (registry.path("v1") / "model.safetensors").read_bytes()
    run_dir = tmp_path / "run"
    cfg = compose_config("update", ["name=demo", *KEEP, *FAST, f"update.remove={made_up}", "update.replay=0",
                                    "finetune.forget_method=ascent", "finetune.forget_weight=20",
                                    "optim.optimizer.lr=3e-2", f"paths.data_cache={cache_root}",
                                    f"paths.output_root={tmp_path / 'out'}", f"paths.run_dir={run_dir}"])
    result = update(cfg)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("registry demo: v2 registered, not promoted (v1 stays live): ")
    assert "worsened by more than update.max_forgetting=0.05" in line
    assert not result["promoted"] and registry.live == "v1"
    assert (registry.path("v1") / "model.safetensors").read_bytes() == weights
    record = registry.manifest("v2")["update"]
    gate = record["gate"]
    assert not gate["passed"] and record["why"] == gate["reason"] and record["why"] in line
    assert gate["removed"]["change"] > 0 and gate["min_removal"] == 0.1 and gate["old_domain"]["change"] > 0.05
    assert record["removed"]["method"] == "ascent" and record["removed"]["data"].startswith("made_up-")
    assert registry.state()["events"][-1]["event"] == "refused"


def test_removing_with_replay_of_the_lines_own_data_warns_and_records_the_exported_loss(tmp_path, cache_root, base,
                                                                                         made_up, prepared, caplog):
    """Replay of the line's own data (update.old_data left at its default) may train on the text being
    removed: one warning line names the way out. The registry's eval loss of the result is the
    exported (last step's) weights' val loss."""
    from lightning_llm.registry import Registry
    from lightning_llm.stages.update import update

    registry = Registry(tmp_path / "out", "demo")
    registry.promote(source=base, reason="first")
    def run_update(run_dir, *overrides):
        cfg = compose_config("update", ["name=demo", *KEEP, *FAST, f"update.remove={made_up}", "trainer.max_steps=4",
                                        "trainer.val_check_interval=3", f"paths.data_cache={cache_root}",
                                        f"paths.output_root={tmp_path / 'out'}", f"paths.run_dir={run_dir}", *overrides])
        caplog.clear()
        with caplog.at_level("WARNING", logger="lightning_llm"):
            update(cfg)

    run_update(tmp_path / "run", f"update.old_data=[{prepared.dir}]")
    assert not [r for r in caplog.records if "replays the line's own data" in r.getMessage()]  # old_data given
    run_update(tmp_path / "run2")
    warned = [r.getMessage() for r in caplog.records if "replays the line's own data" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].endswith("pass update.old_data=[<prepared folder without it>] or update.replay=0")
    run = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert registry.eval_loss("v3") == ("val/loss", run["metrics"]["val/loss"])
    assert run["metrics"]["val/loss"] == pytest.approx(exported_val_loss(tmp_path / "run2", run), abs=1e-4)


def test_the_removal_gate_asks_for_the_rise_and_for_the_rest_to_hold():
    from lightning_llm.registry.update import UpdateConfig, gate

    def losses(kept, old, removed):
        return [{"domain": d, "data": d, "before": 2.0, "after": 2.0 + c, "change": c}
                for d, c in (("new", kept), ("base", old), ("forget", removed))]

    settings = UpdateConfig(remove="poems", min_removal=0.2, max_forgetting=0.05)
    passed = gate(losses(0.01, 0.03, 0.5), settings)  # nothing improved, yet it passes: data= is kept
    assert passed.passed and passed.reason.startswith("removed-text loss 2.0000 -> 2.5000 (+0.5000, at least 0.2)")
    assert passed.as_dict()["removed"] == {"data": "forget", "before": 2.0, "after": 2.5, "change": 0.5}
    too_little = gate(losses(0.0, 0.0, 0.1), settings)
    assert not too_little.passed and "did not rise by update.min_removal=0.2" in too_little.reason
    kept_worse = gate(losses(0.2, 0.0, 0.5), settings)
    assert not kept_worse.passed and kept_worse.reason.startswith("kept (data=) loss 2.0000 -> 2.2000")
    without = gate(losses(-0.1, 0.0, 0.5)[:2], UpdateConfig())  # no remove: the usual gate, no removal entry
    assert without.passed and "removed" not in without.as_dict()
    nan = float("nan")  # a NaN loss (a diverged run) never passes, wherever it is
    for kept, old, removed in ((nan, 0.0, 0.5), (0.0, nan, 0.5), (0.0, 0.0, nan)):
        assert not gate(losses(kept, old, removed), settings).passed
    assert not gate(losses(-0.1, nan, 0.5)[:2], UpdateConfig()).passed
    assert not gate(losses(nan, 0.0, 0.5)[:2], UpdateConfig()).passed


@pytest.mark.parametrize("value", [0, -0.1, "nan"])
def test_min_removal_must_be_positive(value):
    from lightning_llm.config import to_dataclass
    from lightning_llm.registry.update import UpdateConfig

    with pytest.raises(UserError, match=r"^update: min_removal must be more than 0 .*got") as err:
        to_dataclass(UpdateConfig, {"min_removal": float(value)}, "update")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["no folder", "unknown source", "selects nothing", "ascent on instructions"])
def test_bad_forget_input_is_one_error_before_training(tmp_path, cache_root, base, case):
    overrides, message = {
        "no folder": ([f"finetune.forget={tmp_path / 'nope'}"], r"finetune.forget: .*nope is not a prepared-data"),
        "unknown source": (["finetune.forget={source:ftp,name:x}"], r"finetune.forget: .*source"),
        "selects nothing": (["finetune.forget={source:shakespeare,works:[hamlet],genres:[poem]}"], "select no work"),
        "ascent on instructions": (["finetune.forget=x", "finetune.format=instruction"],
                                   "finetune.forget works with text data"),
    }[case]
    with pytest.raises(UserError, match=message):
        finetune_in_process(tmp_path, cache_root, base, overrides)
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_missing_removal_folder_is_one_line_from_the_cli(tmp_path, cache_root, base):
    from lightning_llm.registry import Registry

    Registry(tmp_path / "out", "demo").promote(source=base, reason="first")
    result = llm(["update", "name=demo", f"update.remove={tmp_path / 'gone'}", f"paths.data_cache={cache_root}"],
                 tmp_path / "out", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip() == f"error: update.remove: {tmp_path / 'gone'} is not a prepared-data folder " \
        "(no meta.json in it)"
    assert Registry(tmp_path / "out", "demo").state()["live"] == "v1"
