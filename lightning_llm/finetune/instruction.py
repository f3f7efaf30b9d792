"""Instruction data: JSONL records of {"prompt", "response"} (optionally "system") or chat
{"messages": [{"role", "content"}, ...]}, rendered through the model's chat template, with the
loss on the assistant's tokens only.

Each conversation is rendered whole; the character span of every assistant turn is found by
rendering the conversation up to that turn twice (with the generation prompt, and with the
turn), so whatever the template puts around a turn, only the turn's own text (and the template's
text after it up to the next turn, such as its end-of-turn marker) trains. The tokens are those
of the whole rendered text, so a byte-level BPE merge across the boundary is the one inference
sees; a token is trained when it starts inside an assistant span. The conversation ends with
<|endoftext|>, trained after a final assistant turn: the model learns to stop there, where the
server stops. Targets that carry no loss are -1, GPT.forward's ignore_index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset

from lightning_llm.data.tokenizer import EOT, UNK
from lightning_llm.errors import UserError
from lightning_llm.templates import ChatTemplate

IGNORE = -1  # GPT.forward's cross_entropy ignore_index


def read_conversations(files: list[Path]) -> list[tuple[str, list[dict]]]:
    """Every record of every file as (file:line, messages); the first malformed line is one
    UserError naming its file and line (nothing is trained on half a file)."""
    conversations = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: cannot read it as UTF-8 text ({type(err).__name__})") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                conversations.append((f"{path}:{number}", to_messages(line, f"{path}:{number}")))
    if not conversations:
        raise UserError(f"no instruction records in {', '.join(map(str, files))}: each line should be "
                        '{"prompt": ..., "response": ...} or {"messages": [{"role": ..., "content": ...}, ...]}')
    return conversations


def to_messages(line: str, where: str) -> list[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise UserError(f"{where}: messages[{i}] must be an object with string role and content")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: no assistant message, so nothing to learn from this record")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("response"), str):
        raise UserError(f'{where}: expected string fields "prompt" and "response" (or "messages"), '
                        f"got keys {sorted(record)}")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f'{where}: "system" must be a string')
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]


@dataclass
class Example:
    ids: np.ndarray  # the tokens of the rendered conversation, <|endoftext|> last
    trained: np.ndarray  # bool per token: it is an assistant token (so it is a target with loss)

    def inputs_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.ids[:-1].astype(np.int64))
        y = torch.from_numpy(np.where(self.trained[1:], self.ids[1:], IGNORE).astype(np.int64))
        return x, y


@dataclass
class Rendered:
    examples: list[Example]
    truncated: int  # conversations cut at block_size + 1 tokens
    dropped: int  # conversations with no assistant token left within block_size
    unknown: int  # tokens that are <|unk|>
    tokens: int
    unknown_chars: list[str]  # the most frequent characters behind them


def assistant_spans(messages: list[dict], template: ChatTemplate, specials: dict) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character span of each assistant turn in it."""
    text = template.render(messages, specials=specials, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], specials=specials, add_generation_prompt=True)
        through = template.render(messages[:i + 1], specials=specials, add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise UserError(f"template {template.name!r} does not render a conversation as a sequence of prefixes "
                            "(the text up to a turn changes with what follows): the response tokens cannot be told "
                            "from the prompt's")
        spans.append((len(before), len(through)))
    return text, spans


def render(conversations: list[tuple[str, list[dict]]], *, tokenizer: Tokenizer, template: ChatTemplate, specials: dict,
           block_size: int) -> Rendered:
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.encode_special_tokens = True  # text that spells <|endoftext|> is text, as in the shards
    eot, unk = tokenizer.token_to_id(EOT), tokenizer.token_to_id(UNK)
    out = Rendered([], 0, 0, 0, 0, [])
    unknown_chars: dict[str, int] = {}
    for where, messages in conversations:
        try:
            text, spans = assistant_spans(messages, template, specials)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        encoding = tokenizer.encode(text, add_special_tokens=False)
        starts = np.array([start for start, _ in encoding.offsets], dtype=np.int64)
        trained = np.zeros(len(starts), dtype=bool)
        for start, end in spans:
            trained |= (starts >= start) & (starts < end)
        ids = np.array(encoding.ids + [eot], dtype=np.int64)
        trained = np.append(trained, messages[-1]["role"] == "assistant")
        if unk is not None:
            for token, (start, end) in zip(encoding.ids, encoding.offsets):
                if token == unk:
                    out.unknown += 1
                    unknown_chars[text[start:end]] = unknown_chars.get(text[start:end], 0) + 1
        out.tokens += len(ids)
        if len(ids) > block_size + 1:
            ids, trained = ids[:block_size + 1], trained[:block_size + 1]
            out.truncated += 1
        if not trained[1:].any():
            out.dropped += 1
            continue
        out.examples.append(Example(ids, trained))
    out.unknown_chars = sorted(unknown_chars, key=unknown_chars.get, reverse=True)[:10]
    if not out.examples:
        raise UserError(f"no instruction record keeps a response token within model.block_size={block_size} tokens: "
                        "shorten the prompts")
    return out


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): at least one of each, the same for the same seed."""
    if len(examples) < 2:
        raise UserError(f"{len(examples)} usable instruction record: at least 2 are needed (one held out)")
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def pad_batch(pairs: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs (pad_id) and targets (IGNORE): padding carries no loss."""
    length = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), length), IGNORE, dtype=torch.long)
    for row, (xi, yi) in enumerate(pairs):
        x[row, :len(xi)], y[row, :len(yi)] = xi, yi
    return x, y


class RandomExamples(IterableDataset):
    """An endless stream of padded batches of random examples; batch i comes from a generator
    seeded by (seed, i), as RandomWindows draws its windows, so a run is reproducible."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int, pad_id: int, start_batch: int = 0):
        self.pairs = [e.inputs_targets() for e in examples]
        self.batch_size, self.seed, self.pad_id, self.start_batch = batch_size, seed, pad_id, start_batch

    def __iter__(self):
        batch = self.start_batch
        while True:
            rng = np.random.default_rng([self.seed, batch])
            yield pad_batch([self.pairs[i] for i in rng.integers(0, len(self.pairs), self.batch_size)], self.pad_id)
            batch += 1


def eval_loader(examples: list[Example], batch_size: int, pad_id: int) -> DataLoader:
    pairs = [e.inputs_targets() for e in examples]
    return DataLoader(pairs, batch_size=batch_size, collate_fn=lambda b: pad_batch(b, pad_id))


class InstructionDataModule(pl.LightningDataModule):
    """What TokenDataModule is for token shards, for rendered instruction examples."""

    def __init__(self, train: list[Example], val: list[Example], *, batch_size: int, seed: int, pad_id: int):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed, self.pad_id = train, val, batch_size, seed, pad_id

    def train_dataloader(self):
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        return DataLoader(RandomExamples(self.train, self.batch_size, self.seed, self.pad_id, start), batch_size=None)

    def val_dataloader(self):
        return eval_loader(self.val, self.batch_size, self.pad_id)
