"""The hand-written pieces against what a library gives, on the built-in corpus, side by side in one run.

Each line the project writes by hand instead of calling a library must pay for itself; these are the
measurements that say so (docs/benchmarks.md, "Hand-written pieces"):
  1. the char tokenizer's vocabulary counted with numpy, against `tokenizers`' WordLevelTrainer over
     one-character words (the same characters, in the same order);
  2. the char tokenizer's shard encoding through a code-point table, against `encode_batch_fast`
     (the same ids);
  3. Unigram trained on line-split text, against Unigram over whole documents (a sample of the corpus);
  4. `torch.compile` of the default model (gpt-micro, batch 32) on this CPU: time to the first step
     and steady step time, against eager.

    .venv/bin/python bench/handwritten.py [--repeats 3] [--unigram-chars 1000000] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from lightning_llm.data.shakespeare import read_shakespeare
from lightning_llm.data.tokenizer import UNK, ShardEncoder, TokenizerConfig, char_tokenizer, char_vocabulary
from lightning_llm.model.gpt import GPT, GPTConfig


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def library_char_vocabulary(texts: list[str]) -> list[str]:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    trainer = trainers.WordLevelTrainer(vocab_size=100_000, min_frequency=1, show_progress=False, special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer)
    return [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]


def unigram_seconds(texts: list[str], *, split_lines: bool) -> float:
    tokenizer = Tokenizer(models.Unigram())
    metaspace = pre_tokenizers.Metaspace(prepend_scheme="never")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"), metaspace]) if split_lines else metaspace
    trainer = trainers.UnigramTrainer(vocab_size=2000, show_progress=False, special_tokens=["<|endoftext|>"],
                                      unk_token="<|endoftext|>")
    start = time.perf_counter()
    tokenizer.train_from_iterator(texts, trainer)
    return time.perf_counter() - start


def compile_figures(steps: int) -> dict[str, tuple[float, float]]:
    """(first step s, median later step ms) for eager and compiled training steps of gpt-micro."""
    figures = {}
    for mode in ("eager", "compile"):
        torch.manual_seed(0)
        config = GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, vocab_size=2048, position="rope")
        model = GPT(config)
        step_model = torch.compile(model) if mode == "compile" else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, config.vocab_size, (32, config.block_size))
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            _, loss = step_model(x, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        figures[mode] = (times[0], 1000 * statistics.median(times[1:]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unigram-chars", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    texts = [d.text for d in read_shakespeare(["gutenberg", "folio"])]
    print(f"built-in corpus: {len(texts)} texts, {sum(map(len, texts)) / 1e6:.1f} M characters; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")

    ours, vocab = best(lambda: char_vocabulary(texts, TokenizerConfig(kind="char", vocab_size=None), 0), args.repeats)
    theirs, library_vocab = best(lambda: library_char_vocabulary(texts), args.repeats)
    assert set(vocab) == set(library_vocab), "the two vocabularies differ"
    print(f"1. char vocabulary: numpy {ours:.3f} s, WordLevelTrainer {theirs:.3f} s ({theirs / ours:.0f}x)")

    tokenizer = char_tokenizer([UNK, *vocab])
    encoder, plain = ShardEncoder(tokenizer), Tokenizer.from_str(tokenizer.to_str())
    plain.encode_special_tokens = True
    ours, ids = best(lambda: encoder.encode(texts), args.repeats)
    theirs, library_ids = best(lambda: [np.asarray(e.ids) for e in plain.encode_batch_fast(
        texts, add_special_tokens=False)], args.repeats)
    assert all(np.array_equal(a, b) for a, b in zip(ids, library_ids, strict=True)), "the two encodings differ"
    print(f"2. char shard encoding: table {ours:.3f} s, encode_batch_fast {theirs:.3f} s ({theirs / ours:.0f}x)")

    sample, total = [], 0
    for text in texts:
        if total >= args.unigram_chars:
            break
        sample.append(text[:args.unigram_chars - total])
        total += len(sample[-1])
    lines, whole = unigram_seconds(sample, split_lines=True), unigram_seconds(sample, split_lines=False)
    print(f"3. Unigram on {total / 1e6:.1f} M characters: line-split {lines:.1f} s, whole documents {whole:.1f} s "
          f"({whole / lines:.1f}x)")

    figures = compile_figures(args.steps)
    (eager_first, eager_ms), (compiled_first, compiled_ms) = figures["eager"], figures["compile"]
    print(f"4. gpt-micro training step, batch 32: eager first {eager_first:.2f} s then {eager_ms:.1f} ms; "
          f"torch.compile first {compiled_first:.1f} s then {compiled_ms:.1f} ms ({eager_ms / compiled_ms:.2f}x per "
          f"step; the compile pays for itself after {compiled_first / max((eager_ms - compiled_ms) / 1000, 1e-9):.0f} "
          "steps)" if compiled_ms < eager_ms else
          f"4. gpt-micro training step, batch 32: eager first {eager_first:.2f} s then {eager_ms:.1f} ms; "
          f"torch.compile first {compiled_first:.1f} s then {compiled_ms:.1f} ms (never pays for itself here)")


if __name__ == "__main__":
    main()
