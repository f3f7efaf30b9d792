"""Evaluation: the metrics on toys with known answers, then `llm eval` and `llm compare` end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import compose_config, llm

from lightning_llm.artifacts import pyplot, save_figure
from lightning_llm.data.tokenizer import EOT, TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError
from lightning_llm.evaluation import EvalConfig, KneserNey, evaluate
from lightning_llm.evaluation.classify import classification_metrics, confusion_matrix
from lightning_llm.evaluation.generation import continuation_scores, distinct_n
from lightning_llm.evaluation.lm import lm_metrics, score_tokens, utf8_bytes, window_intervals, window_starts
from lightning_llm.evaluation.report import record_in_run
from lightning_llm.model import GPT, GPTConfig
from lightning_llm.stages.eval import eval_config as checked_config

TINY_TRAIN = ["model=gpt-nano", "batch_size=16", "trainer.max_steps=30", "trainer.val_check_interval=15",
              "val_windows=16", "callbacks.samples.max_new_tokens=20", "optim.optimizer.lr=1e-2",
              "optim.scheduler.warmup_steps=5"]
# Every task, sized to take seconds: the first 20k tokens of each split, a trigram baseline,
# 6 continuations of 24+16 tokens, 30 fine-tuning steps per classifier, short samples.
TINY_EVAL = ["lm.max_tokens=20000", "lm.stride=16", "ngram.order=3", "generation.passages=6",
             "generation.prompt_tokens=24", "generation.new_tokens=16", "classify.steps=30", "classify.batch_size=16",
             "classify.max_eval_passages=200", "samples.new_tokens=20", "samples.temperatures=[0.5,1.0]"]


def eval_config(overrides: list[str]) -> EvalConfig:
    return checked_config(compose_config("eval", overrides))


# ---- language-model metrics -------------------------------------------------------------

def test_perplexity_is_exp_of_the_loss_the_model_itself_computes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=8 * 5 + 1)
    nats, correct = score_tokens(model, tokens, batch_size=2)
    windows = torch.from_numpy(tokens[:-1].reshape(5, 8)), torch.from_numpy(tokens[1:].reshape(5, 8))
    with torch.no_grad():
        logits, loss = model(*windows)
    metrics = lm_metrics(nats, n_bytes=40, correct=correct)
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert metrics["ppl"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert metrics["acc"] == pytest.approx((logits.argmax(-1) == windows[1]).float().mean().item())

    for p in model.parameters():  # every logit zero: the uniform distribution, perplexity = vocabulary
        torch.nn.init.zeros_(p)
    nats, _ = score_tokens(model, tokens)
    assert lm_metrics(nats, 40)["ppl"] == pytest.approx(11.0)


def test_overlapping_windows_score_every_target_exactly_once():
    for n_targets, window, stride in [(100, 8, 8), (100, 8, 3), (9, 8, 8), (8, 8, 2), (57, 16, 5)]:
        starts, skip = window_starts(n_targets, window, stride)
        covered = np.concatenate([np.arange(s + k, s + window) for s, k in zip(starts, skip)])
        assert np.array_equal(covered, np.arange(n_targets)), (n_targets, window, stride)
        assert all(k == 0 or k >= window - stride for k in skip[1:-1])  # at least window - stride of context


def test_bits_per_byte_for_a_char_tokenizer_is_bits_per_char_times_chars_per_byte():
    text = "naïve café — señor, l'été. " * 20  # accented letters and a dash take 2 and 3 bytes
    tokenizer = train_tokenizer(TokenizerConfig(kind="char"), [text])
    tokens = np.array(tokenizer.encode(text).ids)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=1, n_embd=8))
    nats, _ = score_tokens(model, tokens)
    scored_text = text[1:]
    metrics = lm_metrics(nats, utf8_bytes(tokenizer, tokens[1:]))
    chars_per_byte = len(scored_text) / len(scored_text.encode("utf-8"))
    assert chars_per_byte < 0.95
    assert metrics["bpb"] == pytest.approx(metrics["loss"] / math.log(2) * chars_per_byte, rel=1e-9)
    eot = tokenizer.token_to_id(EOT)
    assert utf8_bytes(tokenizer, np.array([eot, *tokens[:3], eot])) == len(text[:3].encode())  # separators: no bytes


# ---- the n-gram baseline ----------------------------------------------------------------

def test_kneser_ney_matches_the_hand_computed_bigram():
    """Corpus 0 1 0 1 0 2: bigram counts (0,1)=2 (1,0)=2 (0,2)=1 give D1 = 0.2 and D2 = D3 = Y = 0.2;
    every token has one left neighbour, so the unigram level is uniform (1/3). After 0:
    P(1) = (2 - 0.2)/3 + (0.2 + 0.2)/3 * 1/3, P(2) = (1 - 0.2)/3 + 0.4/9, P(0) = 0.4/9."""
    model = KneserNey(order=2, vocab_size=3).fit(np.array([0, 1, 0, 1, 0, 2]))
    expected = np.array([0.4 / 9, 1.8 / 3 + 0.4 / 9, 0.8 / 3 + 0.4 / 9])
    assert model.next_token_probs(np.array([[2, 0]]))[0] == pytest.approx(expected)
    assert model.nats(np.array([0, 1])) == pytest.approx([-math.log(expected[1])])


def test_kneser_ney_is_a_distribution_and_beats_a_unigram_on_structured_text():
    rng = np.random.default_rng(0)
    words = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [2, 5, 7]]
    tokens = np.concatenate([words[i] + [0] for i in rng.integers(0, len(words), size=3000)])
    noise = rng.random(len(tokens)) < 0.05
    tokens[noise] = rng.integers(0, 12, size=noise.sum())  # 10 and 11 appear only as noise
    train, test = tokens[:8000], tokens[8000:]
    bits = {order: KneserNey(order, vocab_size=13).fit(train).nats(test).mean() / math.log(2) for order in (1, 2, 3, 4)}
    assert bits[3] < bits[2] < bits[1] - 1.0  # structure the unigram cannot see
    assert bits[4] < bits[1] - 1.0

    model = KneserNey(4, vocab_size=13).fit(train)
    contexts = rng.integers(0, 13, size=(50, 5))  # 12 never occurs: unseen contexts back off
    probs = model.next_token_probs(contexts)
    assert probs.shape == (50, 13) and (probs > 0).all()
    assert probs.sum(axis=1) == pytest.approx(np.ones(50))
    sampled = model.generate(contexts[:4, :3], 20, temperature=1.0, top_k=3, rng=np.random.default_rng(1))
    assert sampled.shape == (4, 23) and np.array_equal(sampled[:, :3], contexts[:4, :3])


# ---- generation scores and classification metrics ---------------------------------------

def test_a_perfect_continuation_scores_maximal_bleu_and_rouge():
    truth = ["Now is the winter of our discontent", "made glorious summer by this sun of York"]
    perfect = continuation_scores(truth, truth)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rougeL"] == pytest.approx(1.0)
    other = continuation_scores(["Now is the summer of my content", "and all the clouds"], truth)
    assert other["bleu"] < 50 and other["rougeL"] < 1.0
    assert distinct_n(["a a a b"], 1) == 0.5 and distinct_n(["a a a b"], 2) == pytest.approx(2 / 3)


def test_precision_recall_f1_on_a_toy_confusion_matrix():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    matrix = confusion_matrix(labels, preds, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    metrics = classification_metrics(matrix, ["a", "b", "c"])
    a = metrics["per_class"]["a"]  # precision 3/4, recall 3/4
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    c = metrics["per_class"]["c"]  # precision 2/3, recall 2/3
    assert c["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.7)
    from torchmetrics.functional.classification import multiclass_f1_score, multiclass_precision
    as_tensors = torch.from_numpy(preds), torch.from_numpy(labels)
    assert metrics["macro"]["f1"] == pytest.approx(multiclass_f1_score(*as_tensors, 3, average="macro").item())
    assert metrics["macro"]["precision"] == pytest.approx(multiclass_precision(*as_tensors, 3, average="macro").item())

    # A class absent from the split (no support): no recall or F1, left out of the macro
    # average, while a passage wrongly given that class still costs its precision.
    absent = classification_metrics(confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), 3),
                                     ["a", "b", "poem"])
    assert absent["per_class"]["poem"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "predicted": 1}
    assert absent["classes_in_macro"] == ["a", "b"]
    assert absent["macro"]["recall"] == pytest.approx((0.5 + 1.0) / 2)


# ---- llm eval and llm compare end to end ------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_root, prepared):
    from lightning_llm.stages.train import train

    run_dir = tmp_path_factory.mktemp("eval-run")
    train(compose_config("train", [*TINY_TRAIN, f"paths.run_dir={run_dir}", f"paths.data_cache={cache_root}"]))
    return run_dir


@pytest.fixture(scope="module")
def evaluated(trained_run):
    result = llm(["eval", f"ckpt={trained_run}", *TINY_EVAL])
    return trained_run, result


def test_llm_eval_writes_every_file_and_prints_the_headline(evaluated, prepared):
    run_dir, result = evaluated
    out = run_dir / "eval"
    for name in ("report.md", "metrics.json", "samples.md", "confusion_val.png", "confusion_test.png"):
        assert (out / name).exists(), name
    assert (out / "confusion_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        lm, ngram = metrics["lm"]["splits"][split], metrics["ngram"]["splits"][split]
        assert lm["tokens"] == ngram["tokens"] == 19999 and lm["bytes"] == ngram["bytes"]
        assert lm["ppl"] == pytest.approx(math.exp(lm["loss"]))
        assert 0 < ngram["bpb"] < math.log2(prepared.meta["vocab_size"]) and 0 < lm["bpb"] < 10
    gen = metrics["generation"]
    assert gen["passages"] == 6 and 0 <= gen["transformer"]["bleu"] <= 100 and 0 <= gen["ngram"]["rougeL"] <= 1
    cls = metrics["classify"]
    assert cls["classes"] == sorted({"comedy", "history", "poem", "tragedy"})
    for init in ("pretrained", "scratch"):
        for split in ("val", "test"):
            split_metrics = cls[init][split]
            assert sum(map(sum, split_metrics["confusion"])) == sum(cls["data"][split]["passages"].values()) <= 200
            assert 0 <= split_metrics["macro"]["f1"] <= 1
    assert metrics["headline"]["test/bpb"] == metrics["lm"]["splits"]["test"]["bpb"]
    lo, hi = metrics["intervals"]["test/bpb_ci"]  # 95% over windows, beside the point estimate
    assert lo < metrics["headline"]["test/bpb"] < hi and {"gen/bleu_ci", "gen/rougeL_ci"} <= set(metrics["intervals"])
    assert f"{metrics['headline']['test/bpb']:.4f} [{lo:.4f}, {hi:.4f}]" in (out / "report.md").read_text()
    assert json.loads((run_dir / "run.json").read_text())["eval"]["metrics"] == metrics["headline"]

    report = (out / "report.md").read_text()
    for heading in ("## Headline", "## Language modelling", "## Generation against held-out text",
                    "## Genre classification by fine-tuning", "](confusion_test.png)", "(samples.md)"):
        assert heading in report, heading
    samples = (out / "samples.md").read_text()
    assert samples.count("### transformer, temperature") == 2 * 4 and "3-gram Kneser-Ney baseline" in samples
    assert "test bits per byte" in result.stdout and "macro F1" in result.stdout


def test_llm_compare_prints_and_writes_one_table(evaluated, tmp_path):
    run_dir, _ = evaluated
    out = tmp_path / "compare.md"
    result = llm(["compare", f"runs=[{run_dir},{run_dir}/eval]", f"out={out}"])
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 2 and "test bpb" in rows[0] and "F1 pretrained" in rows[0]
    headline = json.loads((run_dir / "eval" / "metrics.json").read_text())["headline"]
    assert f"{headline['test/bpb']:.4f}" in rows[2]
    assert out.read_text().count("\n|") == 4


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, cache_root, prepared):
    """Two short training runs of one `llm train -m` that differ in the learning rate alone, no eval."""
    from conftest import TINY

    outputs = tmp_path_factory.mktemp("multirun-outputs")
    (outputs / "data").symlink_to(cache_root)
    llm(["train", "-m", *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2", "val_windows=4",
         "callbacks.samples.max_new_tokens=5", "experiment_name=cmp", "optim.optimizer.lr=0.01,0.002"], outputs)
    return next((outputs / "train" / "cmp").iterdir())


def test_llm_compare_over_a_multirun_shows_what_differs_and_draws_the_losses(multirun, tmp_path):
    out = tmp_path / "compare" / "compare.md"
    result = llm(["compare", f"runs=[{multirun}/*]", f"out={out}"])  # the glob also catches multirun.yaml
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 2
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "optim.optimizer.lr" in header and "train-time best val loss" in header and "metrics from" in header
    assert not any(c.startswith(("paths.", "callbacks.checkpoint.dirpath", "trainer.default_root_dir")) for c in header)
    lr = header.index("optim.optimizer.lr")
    assert [row.strip("|").split("|")[lr].strip() for row in rows[2:]] == ["0.01", "0.002"]
    assert "Skipped, not runs:" in result.stdout and "multirun.yaml" in result.stdout
    assert "No eval, compared on the metrics training recorded in run.json" in result.stdout
    for name in ("loss.png", "optim.optimizer.lr_vs_val_loss.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in out.read_text()
    from lightning_llm.evaluation.compare import compare

    again = compare([str(multirun)], tmp_path / "again.md")  # the multirun dir itself stands for its runs
    assert [ln for ln in again.splitlines() if ln.startswith("|")] == rows


def test_compare_flags_evals_made_with_different_settings(evaluated, multirun, tmp_path):
    from lightning_llm.evaluation.compare import compare

    run_dir, _ = evaluated
    other = tmp_path / "other-eval"
    shutil.copytree(run_dir / "eval", other)
    results = json.loads((other / "metrics.json").read_text())
    results["config"]["lm"]["max_tokens"] = 5000  # as `llm eval ... lm.max_tokens=5000 out_dir=...` records it
    (other / "metrics.json").write_text(json.dumps(results))
    text = compare([str(run_dir), str(other), f"{multirun}/0"], tmp_path / "c.md")
    assert "WARNING: evals made with different settings" in text and "lm.max_tokens" in text
    assert "5000" in text and "20000" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3 and rows[2].rstrip(" |").endswith("eval") and rows[4].rstrip(" |").endswith("run.json")
    assert f"No eval, compared on the metrics training recorded in run.json: {multirun}/0" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a run"):
        compare([str(tmp_path / "empty")], tmp_path / "d.md")


def test_eval_metrics_reach_the_runs_wandb_summary(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="eval-test", dir=str(tmp_path))
    run.finish()
    logger = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "eval-test", "save_dir": str(tmp_path)}
    (tmp_path / "run.json").write_text(json.dumps({"overrides": {"logger": {"wandb": logger}}}))
    plt = pyplot()
    figure = plt.figure(figsize=(2, 2))
    save_figure(figure, tmp_path / "eval" / "confusion_test.png")
    record_in_run(tmp_path, {"test/bpb": 2.5}, tmp_path / "eval")
    resumed = [p for p in (tmp_path / "wandb").glob(f"offline-run-*-{run.id}") if b"eval/test/bpb" in
               (p / f"run-{run.id}.wandb").read_bytes()]
    assert len(resumed) == 1  # the same W&B run id, now with the eval metrics in its summary
    assert b"eval/confusion_test" in (resumed[0] / f"run-{run.id}.wandb").read_bytes()  # and the plot as an image
    assert list((resumed[0] / "files" / "media" / "images" / "eval").glob("confusion_test_*.png"))
    assert json.loads((tmp_path / "run.json").read_text())["eval"]["metrics"] == {"test/bpb": 2.5}


# ---- bad input: one clear line ----------------------------------------------------------

def test_a_checkpoint_without_tokenizer_or_data_reference_is_refused(trained_run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(trained_run / "model", bare)
    with pytest.raises(UserError, match="no data reference"):
        evaluate(eval_config([f"ckpt={bare}", "tasks=[lm]"]))
    (bare / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="has no tokenizer.json"):
        evaluate(eval_config([f"ckpt={bare}", "tasks=[lm]"]))
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del state["tokenizer_json"]
    torch.save(state, tmp_path / "no_tokenizer.ckpt")
    with pytest.raises(UserError, match="holds no tokenizer"):
        evaluate(eval_config([f"ckpt={tmp_path / 'no_tokenizer.ckpt'}", "tasks=[lm]"]))


def test_a_test_split_too_small_for_the_passages_is_refused(trained_run, tmp_path):
    config = eval_config([f"ckpt={trained_run}", f"out_dir={tmp_path}", "tasks=[lm,generation]",
                          "generation.passages=1000000", "generation.prompt_tokens=64"])
    with pytest.raises(UserError, match=r"the test split holds only \d+ passages of 64\+64 tokens, fewer than "
                                        r"generation.passages=1000000"):
        evaluate(config)
    assert not (tmp_path / "metrics.json").exists()  # refused before any work


def test_an_unknown_task_is_refused_before_any_work():
    with pytest.raises(UserError, match=r"unknown task\(s\) \['bleu'\]; tasks are lm, ngram, generation, classify, "
                                        r"samples"):
        eval_config(["ckpt=outputs/no_such_run", "tasks=[lm,bleu]"])


def test_a_stride_below_one_is_refused_before_any_work():
    with pytest.raises(UserError, match="lm.stride must be at least 1, got -4"):
        eval_config(["ckpt=outputs/no_such_run", "lm.stride=-4"])


# ---- uncertainty: bootstrap intervals and runs that cannot be told apart -----------------

def test_window_intervals_hold_the_estimate_narrow_with_more_windows_and_repeat_for_a_seed():
    rng = np.random.default_rng(0)
    block = 16

    def interval(n_windows: int, seed: int = 0) -> tuple[float, list[float]]:
        nats = rng.gamma(2.0, 1.0, size=n_windows * block)
        bytes_per_block = rng.integers(20, 40, size=n_windows).astype(float)
        point = lm_metrics(nats, int(bytes_per_block.sum()))["bpb"]
        return point, window_intervals(nats, bytes_per_block, int(bytes_per_block.sum()), block, seed=seed)

    widths = []
    for n_windows in (20, 2000):
        point, ci = interval(n_windows)
        lo, hi = ci["bpb_ci"]
        assert lo < point < hi and ci["windows"] == n_windows
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # 100x the windows: about 10x narrower

    nats = rng.gamma(2.0, 1.0, size=50 * block)
    bytes_per_block = np.full(50, 30.0)
    first = window_intervals(nats, bytes_per_block, 1500, block, seed=3)
    assert window_intervals(nats, bytes_per_block, 1500, block, seed=3) == first
    assert window_intervals(nats, bytes_per_block, 1500, block, seed=4) != first
    assert first["ppl_ci"][0] < lm_metrics(nats, 1500)["ppl"] < first["ppl_ci"][1]
    assert window_intervals(nats[:block], bytes_per_block[:1], 30, block)["bpb_ci"] is None  # one window: none


def test_bleu_and_rouge_carry_bootstrap_intervals_around_the_score():
    rng = np.random.default_rng(0)
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    refs = [" ".join(rng.choice(words, 12)) for _ in range(30)]
    hyps = [" ".join(w if rng.random() < 0.6 else rng.choice(words) for w in ref.split()) for ref in refs]
    scores = continuation_scores(hyps, refs, seed=1)
    assert scores["bleu_ci"][0] < scores["bleu"] < scores["bleu_ci"][1]
    assert scores["rougeL_ci"][0] < scores["rougeL"] < scores["rougeL_ci"][1]
    assert continuation_scores(hyps, refs, seed=1) == scores
    assert continuation_scores(hyps[:1], refs[:1])["rougeL_ci"] is None


def test_compare_marks_runs_whose_intervals_overlap_as_indistinguishable(tmp_path):
    from lightning_llm.evaluation.compare import Run, compare_markdown

    def run(name: str, bpb: float, ci: list[float] | None) -> Run:
        results = {"headline": {"test/bpb": bpb}, "intervals": {"test/bpb_ci": ci} if ci else {}, "config": {}}
        return Run(tmp_path / name, None, {}, results)

    a, b, c = run("a", 2.40, [2.38, 2.42]), run("b", 2.41, [2.39, 2.43]), run("c", 2.60, [2.58, 2.62])
    text = compare_markdown([a, b, c])
    assert f"Indistinguishable on test bpb (their 95% intervals overlap): {a.name} and {b.name}." in text
    assert f"{c.name} and" not in text and f"and {c.name}" not in text
    assert "2.4000 [2.3800, 2.4200]" in text
    assert "disjoint" in compare_markdown([a, c]) and "Indistinguishable" not in compare_markdown([a, c])
    without = compare_markdown([a, run("d", 2.41, None)])  # one run has no interval: no verdict either way
    assert "Indistinguishable" not in without and "disjoint" not in without


def test_bleu_interval_is_our_own_seeded_bootstrap_of_sacrebleus_corpus_statistics():
    """The BLEU interval rests on sacrebleu's public API alone (per-passage counts, compute_bleu): the
    statistics sum back to its corpus BLEU exactly, and the resampling follows our seed."""
    from sacrebleu.metrics import BLEU

    from lightning_llm.evaluation.generation import bleu_interval, bleu_statistics, corpus_bleu

    rng = np.random.default_rng(5)
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    refs = [" ".join(rng.choice(words, 10)) for _ in range(20)]
    hyps = [" ".join(w if rng.random() < 0.5 else rng.choice(words) for w in ref.split()) for ref in refs]
    assert corpus_bleu(bleu_statistics(hyps, refs)) == BLEU().corpus_score(hyps, [refs]).score
    first = bleu_interval(hyps, refs, seed=1)
    assert bleu_interval(hyps, refs, seed=1) == first and bleu_interval(hyps, refs, seed=2) != first
    assert continuation_scores(hyps, refs, seed=2)["bleu_ci"] == bleu_interval(hyps, refs, seed=2)
    assert 0 <= first[0] < BLEU().corpus_score(hyps, [refs]).score < first[1] <= 100
