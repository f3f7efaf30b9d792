"""Tokenizers trained with HF `tokenizers` and saved as one `tokenizer.json`.

`char`: one token per character (WordLevel over single characters), the classic
baseline whose loss reads directly as nats per character. `bpe`: byte-level BPE as in
GPT-2, which can encode any text. `unigram`: a SentencePiece-style unigram model over
words marked with a leading `▁` (pieces never span a line break). All reserve `<|endoftext|>` (id 0), which separates
documents in the shards, and optional BOS/EOS/PAD tokens for later stages; `char` and
`unigram` map what they never saw in training to `<|unk|>`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lightning_llm.data.ngrams import code_points
from lightning_llm.errors import UserError

EOT = "<|endoftext|>"  # separates documents
UNK = "<|unk|>"  # char and unigram: a character never seen in training
KINDS = ("char", "bpe", "unigram")
# Each kind's defaults, as conf/tokenizer/<kind>.yaml sets them.
KIND_DEFAULTS = {"char": {"vocab_size": 0, "min_frequency": 1}, "bpe": {"vocab_size": 4096, "min_frequency": 2},
                 "unigram": {"vocab_size": 4096, "min_frequency": 1}}


@dataclass
class TokenizerConfig:
    """`TokenizerConfig(kind=k)` is what `tokenizer=k` composes (conf/tokenizer/<k>.yaml)."""

    kind: str = "char"  # char | bpe | unigram
    vocab_size: int | None = None  # bpe, unigram: the whole vocabulary; char: at most this many (0: every character)
    min_frequency: int | None = None  # bpe: pairs rarer than this are not merged; char: rarer characters become <|unk|>
    bos: str | None = "<|bos|>"  # reserved special tokens (null: none); documents are separated by <|endoftext|>
    eos: str | None = "<|eos|>"
    pad: str | None = "<|pad|>"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"tokenizer.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for key, value in KIND_DEFAULTS[self.kind].items():  # None: the kind's default
            if getattr(self, key) is None:
                setattr(self, key, value)
        specials = self.special_tokens()
        if len(set(specials)) != len(specials) or any(not s for s in specials):
            raise ValueError(f"tokenizer: special tokens must be distinct and non-empty, got {specials}")
        if any(len(s) == 1 for s in specials):
            # one character is text: the char tokenizer would read it from documents as the special token
            raise ValueError(f"tokenizer: special tokens must be longer than one character, got {specials}: "
                             "use a form like <|bos|>")
        if self.kind == "bpe" and self.vocab_size < 256 + len(specials) + 1:
            raise ValueError(f"tokenizer.vocab_size: a byte-level BPE vocabulary needs more than "
                             f"{256 + len(specials)} tokens (256 bytes and the special tokens), got {self.vocab_size}")
        if self.kind == "unigram" and self.vocab_size <= len(specials):
            raise ValueError(f"tokenizer.vocab_size ({self.vocab_size}) must exceed the special tokens")
        if self.vocab_size < 0 or self.min_frequency < 1:
            raise ValueError("tokenizer.vocab_size must be at least 0 and tokenizer.min_frequency at least 1")

    def special_tokens(self) -> list[str]:
        unk = [UNK] if self.kind != "bpe" else []
        return [EOT] + unk + [t for t in (self.bos, self.eos, self.pad) if t is not None]

    def identity(self) -> dict:
        """The knobs that change what this kind trains (for the cache key)."""
        used = {"char": ("vocab_size", "min_frequency"), "bpe": ("vocab_size", "min_frequency"),
                "unigram": ("vocab_size",)}[self.kind]
        return {"kind": self.kind, "special_tokens": self.special_tokens(), **{k: getattr(self, k) for k in used}}


def train_tokenizer(config: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """BPE and unigram training show the library's own progress bars on a terminal."""
    specials = config.special_tokens()
    if config.kind == "char":
        return char_tokenizer(specials + char_vocabulary(texts, config, len(specials)))
    if config.kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                      special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=sys.stderr.isatty())
    else:
        tokenizer = Tokenizer(models.Unigram())
        # Pieces never span a line break: lines stay lines, and training is faster (bench/handwritten.py).
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
                                                           pre_tokenizers.Metaspace(prepend_scheme="never")])
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
        trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=specials, unk_token=UNK,
                                          initial_alphabet=sorted(set("".join(specials))),
                                          show_progress=sys.stderr.isatty())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if config.kind == "unigram":
        tokenizer = demote_special_pieces(tokenizer, specials)
    return tokenizer


def demote_special_pieces(tokenizer: Tokenizer, specials: list[str]) -> Tokenizer:
    """The unigram trainer puts the special tokens among the pieces with the best score, so text that
    spells one (`<|endoftext|>` quoted in a document) would become it. Give them a score no path of
    characters can lose to (their characters are in the alphabet): only the special-token path
    then makes them."""
    spec = json.loads(tokenizer.to_str())
    for piece in spec["model"]["vocab"]:
        if piece[0] in specials:
            piece[1] = -1e9
    return Tokenizer.from_str(json.dumps(spec))


def char_vocabulary(texts: Iterable[str], config: TokenizerConfig, n_special: int) -> list[str]:
    """The characters of the texts, most frequent first (ties by code point), without those rarer
    than min_frequency and past vocab_size. Counted with numpy: WordLevelTrainer over
    one-character words finds the same characters two orders of magnitude slower
    (bench/handwritten.py; docs/benchmarks.md, "Hand-written pieces")."""
    counts = np.zeros(0, dtype=np.int64)
    for text in texts:
        found = np.bincount(code_points(text))
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[:len(found)] += found
    order = np.lexsort((np.arange(len(counts)), -counts))
    order = order[counts[order] >= config.min_frequency]
    if config.vocab_size:
        order = order[:max(config.vocab_size - n_special, 0)]
    return [chr(c) for c in order.tolist()]


def char_tokenizer(vocabulary: list[str]) -> Tokenizer:
    """One token per character: a WordLevel model over a pre-tokenizer that isolates each character."""
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([t for t in vocabulary if len(t) > 1])  # specials are never one character
    return tokenizer


class ShardEncoder:
    """Token ids of documents for the shards. Special tokens written in a document are read as
    plain text, so a document can never forge a separator. The char tokenizer goes through a
    numpy table from code point to id: the same ids as `tokenizer.encode` (a test holds them
    equal), two orders of magnitude faster (bench/handwritten.py; docs/benchmarks.md)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.encode_special_tokens = True
        self.table = None
        if isinstance(self.tokenizer.model, models.WordLevel):
            vocab = self.tokenizer.get_vocab()
            self.unk = vocab[UNK]
            singles = {ord(token): i for token, i in vocab.items() if len(token) == 1}
            self.table = np.full(max(singles, default=0) + 1, self.unk, dtype=np.int64)
            self.table[list(singles)] = list(singles.values())

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if self.table is None:
            return [np.asarray(e.ids, dtype=np.int64) for e in
                    self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        out = []
        for text in texts:
            codes = code_points(text)
            known = codes < len(self.table)
            out.append(np.where(known, self.table[np.where(known, codes, 0)], self.unk))
        return out


def decode_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Readable text of generated ids: a document separator shows as a blank line."""
    return tokenizer.decode(ids, skip_special_tokens=False).replace(EOT, "\n\n")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """A prompt's ids; an empty prompt starts a new document."""
    return encode_prompt(tokenizer, prompt) if prompt else [tokenizer.token_to_id(EOT)]


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; characters the vocabulary lacks are an error, not silent UNKs."""
    encoding = tokenizer.encode(text)
    unk_id = tokenizer.token_to_id(UNK)
    missing = sorted({text[start:end].strip() or text[start:end]
                      for token, (start, end) in zip(encoding.ids, encoding.offsets) if token == unk_id})
    if missing:
        raise UserError(f"the prompt has characters the tokenizer never saw in training: "
                        f"{' '.join(repr(c) for c in missing)}; remove or replace them")
    if not encoding.ids:
        raise UserError("the prompt is empty: pass prompt='...' with at least one character")
    return encoding.ids
