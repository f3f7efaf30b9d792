"""The data card says where its tokenizer came from: trained on the train split, or given (the base
model's, when `llm finetune` or `llm update` prepare new data with an existing tokenizer)."""

from __future__ import annotations

import random

from lightning_llm.data import DataConfig, SplitConfig, TokenizerConfig, prepare

WORDS = "the quick brown fox jumps over a lazy dog while seven bold kings read old maps".split()


def write_text_files(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(30)]
        (folder / f"doc{i}.txt").write_text("\n".join(lines) + "\n")


def test_the_data_card_says_whether_the_tokenizer_was_trained_or_given(tmp_path):
    write_text_files(tmp_path / "text", 2)
    data = DataConfig(name="files", source="text_files", paths=[str(tmp_path / "text" / "*.txt")], workers=1,
                      split=SplitConfig(val=0.0, test=0.0))
    trained = prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache")
    card = (trained.dir / "report.md").read_text()
    assert "trained on the train split only" in card and "given" not in card.split("## Tokenizer")[1]

    given = prepare(data, TokenizerConfig(kind="char"), tmp_path / "cache",
                    tokenizer_json=trained.tokenizer_path.read_text())
    assert given.dir != trained.dir
    section = (given.dir / "report.md").read_text().split("## Tokenizer")[1].split("\n## ")[0]
    assert "given, not trained on this data" in section
    assert "trained on the train split" not in section
