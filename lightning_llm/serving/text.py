"""Text on the server's side of the tokenizer: incremental decoding, stop strings, special tokens (the chat
templates live in lightning_llm/templates.py)."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import EOT
from lightning_llm.templates import DEFAULT_TEMPLATE, compile_template, load_template, render_chat

__all__ = ["DEFAULT_CHAT_TEMPLATE", "IncrementalDecoder", "StopMatcher", "compile_template", "render_chat",
           "special_tokens", "token_text"]

# The plain role-marker template (conf/template/plain.yaml): what a model that records none is served with.
DEFAULT_CHAT_TEMPLATE = load_template(DEFAULT_TEMPLATE).source


class IncrementalDecoder:
    """Text deltas of a growing token sequence. Decoding a short window and emitting only what it
    adds keeps multi-token characters (byte-level BPE) and word joins (Metaspace) right; a
    delta that ends in an incomplete UTF-8 sequence waits for the next token."""

    def __init__(self, tokenizer: Tokenizer, context: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(context[-4:])  # a few prompt tokens, so the first delta joins them right
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class StopMatcher:
    """Finds stop strings in streamed text. Text that could still be the start of a stop string is
    held back until the next piece shows whether it is."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was found; the text is cut before it)."""
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[:min(found)], ""
            return out, True
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(self.pending) + 1))
                    if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How one token reads in logprobs: its decoded text, special tokens by name."""
    return _token_text(tokenizer, token_id)


@lru_cache(maxsize=65536)
def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def special_tokens(tokenizer: Tokenizer) -> dict[str, str | None]:
    """The special tokens as clients should use them. Documents in the training shards are
    separated by <|endoftext|>, so it is both what the model ends text with (eos: where the
    server stops) and what a document starts after (bos: the prefix scoring clients put before
    an empty context), as in GPT-2; the reserved <|bos|> was never trained. pad as reserved."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    eot = EOT if EOT in vocab else None
    return {"eos_token": eot, "bos_token": eot, "pad_token": "<|pad|>" if "<|pad|>" in vocab else None}
