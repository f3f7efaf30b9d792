"""Tokenizers trained with HF `tokenizers` and saved as one `tokenizer.json`.

`char`: one token per character (WordLevel over single characters), the classic
baseline whose loss reads directly as nats per character. `bpe`: byte-level BPE as in
GPT-2, which can encode any text. Both end each document with a separator token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lightning_llm.errors import UserError

EOT = "<|endoftext|>"  # separates documents
UNK = "<|unk|>"  # char tokenizer only: a character never seen in training


@dataclass
class TokenizerConfig:
    kind: str = "char"  # char | bpe
    vocab_size: int = 4096  # bpe only: a char vocabulary is whatever the training text holds
    min_frequency: int = 2  # bpe only

    def __post_init__(self):
        if self.kind not in ("char", "bpe"):
            raise ValueError(f"tokenizer.kind must be char or bpe, got {self.kind!r}")
        if self.kind == "bpe" and self.vocab_size < 257 + 1:
            raise ValueError(f"a byte-level BPE vocabulary needs more than 257 tokens, got {self.vocab_size}")


def train_tokenizer(config: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    if config.kind == "char":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(vocab_size=1 << 20, min_frequency=1, special_tokens=[EOT, UNK],
                                            show_progress=False)
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                      special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; characters the vocabulary lacks are an error, not silent UNKs."""
    unk_id = tokenizer.token_to_id(UNK)
    if unk_id is not None:
        missing = sorted({ch for ch in text if tokenizer.token_to_id(ch) is None})
        if missing:
            raise UserError(f"the prompt has characters the tokenizer never saw in training: "
                            f"{' '.join(repr(c) for c in missing)}; remove or replace them")
    ids = tokenizer.encode(text).ids
    if not ids:
        raise UserError("the prompt is empty: pass prompt='...' with at least one character")
    return ids
