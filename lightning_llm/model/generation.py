"""Streaming generation over the KV cache: prompts of different lengths decoded together.

`Batch` holds the rows being generated in one KV cache, row i in cache row i. A row joins by
prefill (`add`), every `step` is one forward over all rows followed by one sampled token per
row, and a row leaves when it finishes (the last row moves into its place, so a step is
always one forward over cache rows [0, n)). `stream` runs a fixed set of prompts to the end;
the serving engine drives a Batch itself, adding requests and cancelling them between steps.

Context: a prompt must leave room for one token (at most block_size - 1 tokens, else
ValueError), and a row stops with finish_reason "length" when its prompt and completion fill
the window (block_size tokens). With `slide` on, a prompt may fill the window, and a row whose
newest token has no position left continues from its last block_size // 2 tokens
(re-prefilled), so past the window it conditions on less than a full window.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lightning_llm.model.gpt import GPT, KVCache
from lightning_llm.model.sampling import logprobs as token_logprobs
from lightning_llm.model.sampling import sample


@dataclass(eq=False)
class Row:
    """One sequence to generate, with its own sampling settings."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    generator: torch.Generator | None = None  # rows that share one generator draw from it together
    stop: tuple[tuple[int, ...], ...] = ()  # token-id sequences that end the row (finish_reason "stop")
    logprobs: int | None = None  # report the chosen token's logprob and this many alternatives
    score_prompt: bool = False  # logprobs of the prompt's own tokens, from the prefill
    key: Any = None  # the caller's name for the row, reported in Token.row
    tokens: list[int] = field(init=False)  # prompt + generated; the last one is not in the cache yet
    generated: int = field(init=False, default=0)
    prompt_logprobs: list | None = field(init=False, default=None)  # [None, (logprob, [(id, logprob)...]), ...]
    prompt_loss: float | None = field(init=False, default=None)  # mean NLL of prompt tokens 1.. (None: 1 token)

    def __post_init__(self):
        self.prompt = list(self.prompt)
        self.tokens = list(self.prompt)


@dataclass
class Token:
    """One row's outcome of one step."""

    row: Any  # Row.key
    id: int | None  # None only when a row ends without a token (max_new_tokens=0)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # None while running; "stop" (eos or a stop sequence) or "length"


def cache_dtype(weight: torch.Tensor) -> torch.dtype:
    """The KV cache's dtype, in which attention runs: the weights' dtype, except bf16 on a CPU,
    where attention stays fp32 (torch's CPU attention in bf16 measured 4.5-6x slower than in fp32
    at decode shapes: docs/benchmarks.md, "Weight layout per matrix, attention in fp32")."""
    return torch.float32 if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 else weight.dtype


def check_prompt(prompt: Sequence[int], block_size: int, *, slide: bool = False, max_new_tokens: int = 1) -> None:
    """A prompt must leave room in the window for one new token; it may fill the window when
    the window slides, or when nothing is generated (a prompt only scored)."""
    if len(prompt) == 0:
        raise ValueError("the prompt is empty: it needs at least one token")
    limit = block_size if slide or max_new_tokens == 0 else block_size - 1
    if len(prompt) > limit:
        raise ValueError(f"the prompt has {len(prompt)} tokens but the model's context (block_size {block_size}) "
                         f"leaves room for at most {limit} prompt tokens")


class Batch:
    """Rows decoded together over one KV cache of `capacity` rows (see the module docstring)."""

    def __init__(self, model: GPT, capacity: int, *, eos_id: int | None = None, slide: bool = False,
                 prompt_loss: bool = False):
        parameter = next(model.parameters())
        self.model, self.capacity, self.eos_id, self.slide = model, capacity, eos_id, slide
        self.prompt_loss = prompt_loss  # score every prompt (its mean loss), not only those that ask
        self.block_size = model.config.block_size
        self.device = parameter.device
        self.cache = acquire_cache(model, capacity, parameter.device, cache_dtype(parameter))
        self.view: KVCache | None = None
        self.rows: list[Row] = []
        self.inputs: torch.Tensor | None = None  # (n, 1) ids the next step feeds, when the last step's ids are them

    def close(self) -> None:
        """Hand the KV cache back for the next Batch of this model (its rows are then no longer valid)."""
        if self.cache is not None:
            release_cache(self.model, self.cache)
            self.cache, self.view, self.rows = None, None, []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: list[Row]) -> list[Token]:
        """Prefill the rows' prompts (all but the last token, which the next step feeds) into
        free cache rows; returns the final Tokens of rows that asked for no new tokens."""
        for row in rows:
            check_prompt(row.prompt, self.block_size, slide=self.slide, max_new_tokens=row.max_new_tokens)
            if row.max_new_tokens < 0:
                raise ValueError(f"max_new_tokens must be at least 0, got {row.max_new_tokens}")
        if len(self.rows) + len(rows) > self.capacity:
            raise ValueError(f"{len(self.rows)} + {len(rows)} rows exceed the batch capacity {self.capacity}")
        start = len(self.rows)
        self.rows += rows
        self.inputs = None
        self.prefill(start, rows, [row.prompt[:-1] for row in rows], score=True)
        done = [row for row in rows if row.max_new_tokens == 0]
        for row in done:
            self.remove(row)
        return [Token(row.key, None, finish_reason="length") for row in done]

    def prefill(self, start: int, rows: list[Row], contexts: list[list[int]], *, score: bool) -> None:
        """Write the contexts into cache rows start, start + 1, ... in one right-padded forward:
        the padding lies past each row's length, where the mask hides it until it is overwritten."""
        cache = self.cache.rows(start, start + len(rows))
        cache.lengths.zero_()
        T = max(len(c) for c in contexts)
        if T == 0:
            return
        idx = torch.tensor([c + [0] * (T - len(c)) for c in contexts], device=self.device)
        scored = [score and (row.score_prompt or self.prompt_loss) and len(row.prompt) > 1 for row in rows]
        # through forward (not features) so that a sharded model (FSDP) gathers its weights
        logits = self.model(idx, cache=cache, every_position=any(scored))[0]
        cache.lengths.copy_(torch.tensor([len(c) for c in contexts]))
        for b, row in enumerate(rows):
            if scored[b]:
                self.score(row, logits[b, :len(contexts[b])])

    def score(self, row: Row, logits: torch.Tensor) -> None:
        """The prompt's loss and, if asked, its tokens' logprobs, from the prefill's logits."""
        logp = F.log_softmax(logits.float(), dim=-1)  # position t predicts token t + 1
        targets = torch.tensor(row.prompt[1:], device=self.device)
        chosen = logp.gather(-1, targets[:, None]).squeeze(-1)
        row.prompt_loss = -chosen.mean().item()
        if row.score_prompt:
            top = torch.topk(logp, min(row.logprobs or 0, logp.size(-1)), dim=-1)
            row.prompt_logprobs = [None] + [(lp, list(zip(ids, values))) for lp, ids, values in
                                            zip(chosen.tolist(), top.indices.tolist(), top.values.tolist())]

    def remove(self, row: Row) -> None:
        """Drop a row now (finished or cancelled); the last row moves into its cache row."""
        i = next(i for i, r in enumerate(self.rows) if r is row)
        last = len(self.rows) - 1
        if i != last:
            self.cache.move(last, i)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        self.inputs = None

    def step(self) -> list[Token]:
        """One forward over all rows (each feeds its newest token), one token sampled per row;
        rows that finish leave. Returns one Token per row, in row order before removals."""
        rows = self.rows
        if not rows:
            return []
        if self.slide:  # a row whose cache is full (its newest token has no position) restarts
            keep = max(1, self.block_size // 2)
            for i, length in enumerate(self.cache.lengths[:len(rows)].tolist()):
                if length == self.block_size:
                    self.prefill(i, [rows[i]], [rows[i].tokens[-keep:-1]], score=False)
        if self.view is None or len(self.view.lengths) != len(rows):
            self.view = self.cache.rows(0, len(rows))  # rows [0, n) as one cache, kept while n stays
        idx = self.inputs if self.inputs is not None else \
            torch.tensor([[row.tokens[-1]] for row in rows], device=self.device)
        logits = self.model(idx, cache=self.view)[0][:, -1].float()
        ids = self.choose(logits)
        self.inputs = ids[:, None]  # what the next step feeds, unless a row joins or leaves (then None)
        ids_list = ids.tolist()
        wanted = [row.logprobs for row in rows if row.logprobs is not None]
        if wanted:
            chosen, top_values, top_ids = (t.tolist() for t in token_logprobs(logits, ids, max(wanted)))
        out = []
        for i, (row, token) in enumerate(zip(rows, ids_list)):
            row.tokens.append(token)
            row.generated += 1
            result = Token(row.key, token, finish_reason=self.finish_reason(row, token))
            if row.logprobs is not None:
                result.logprob = chosen[i]
                result.top_logprobs = list(zip(top_ids[i][:row.logprobs], top_values[i][:row.logprobs]))
            out.append(result)
        for row, result in zip(list(rows), out):
            if result.finish_reason is not None:
                self.remove(row)
        return out

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample every row with its own settings: one call per group of rows that share them."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.rows):
            groups.setdefault((row.temperature, row.top_k, row.top_p), []).append(i)
        if len(groups) == 1:
            (temperature, top_k, top_p), members = next(iter(groups.items()))
            return sample(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=self.generators(members))
        ids = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        for (temperature, top_k, top_p), members in groups.items():
            at = torch.tensor(members, device=logits.device)
            ids[at] = sample(logits[at], temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=self.generators(members))
        return ids

    def generators(self, members: list[int]):
        gens = [self.rows[i].generator for i in members]
        return gens[0] if all(g is gens[0] for g in gens) else gens  # one shared generator draws for all

    def finish_reason(self, row: Row, token: int) -> str | None:
        if token == self.eos_id or any(row.generated >= len(s) and tuple(row.tokens[-len(s):]) == s
                                       for s in row.stop):
            return "stop"
        if row.generated >= row.max_new_tokens or (not self.slide and len(row.tokens) >= self.block_size):
            return "length"
        return None


@torch.inference_mode()
def stream(model: GPT, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
           top_k: int | None = None, top_p: float = 1.0,
           generators: torch.Generator | Sequence[torch.Generator | None] | None = None,
           stop: Sequence[Sequence[int]] = (), eos_id: int | None = None,
           should_stop: Callable[[], bool] | None = None, logprobs: int | None = None,
           slide: bool = False) -> Iterator[list[Token]]:
    """Generate continuations of the prompts together, yielding after every step a list with
    one Token per still-running row (Token.row is the prompt's index): its new token id, its
    logprob and top `logprobs` alternatives when asked, and finish_reason on its last token:
    "stop" for eos_id or a stop sequence (token ids; the stopping tokens are yielded), "length"
    for max_new_tokens or a full window (module docstring; `slide` continues instead).

    `generators`: one for all rows (drawn together), or one per prompt, which makes a row's
    sampled tokens independent of the other rows. `should_stop()` is polled before every
    forward; when it returns True the stream ends at once. Raises ValueError for a prompt
    longer than block_size - 1 tokens (block_size with `slide`). The caller sets the model's
    mode (eval for inference).
    """
    if generators is None or isinstance(generators, torch.Generator):
        generators = [generators] * len(prompts)
    if len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
    stop = tuple(tuple(s) for s in stop if len(s))
    rows = [Row(prompt, max_new_tokens, temperature, top_k, top_p, generator, stop, logprobs, key=i)
            for i, (prompt, generator) in enumerate(zip(prompts, generators))]
    batch = Batch(model, max(1, len(rows)), eos_id=eos_id, slide=slide)
    try:
        finished = batch.add(rows)
        if finished:
            yield finished
        while batch.rows:
            if should_stop is not None and should_stop():
                return
            yield batch.step()
    finally:
        batch.close()


_pool: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> KV caches not in use
_pool_lock = threading.Lock()


def acquire_cache(model: GPT, capacity: int, device, dtype) -> KVCache:
    """A KV cache of at least `capacity` rows for this model: a free one from an earlier Batch
    when one fits (no allocation, no zeroing: stale rows lie past every row's length, where
    the mask hides them), else a new one. Each cache serves one Batch at a time."""
    with _pool_lock:
        free = _pool.get(model, [])
        for i, cache in enumerate(free):
            if (len(cache.lengths) >= capacity and cache.dtype == dtype
                    and cache.keys[0].device == torch.device(device) and cache.block_size == model.config.block_size):
                del free[i]
                view = cache.rows(0, capacity)
                view.lengths.zero_()
                view.owner = cache
                return view
    cache = KVCache(model.config, capacity, device, dtype)
    cache.owner = cache
    return cache


def release_cache(model: GPT, cache: KVCache) -> None:
    """Return a cache from acquire_cache; the pool keeps the largest few per model."""
    owner = getattr(cache, "owner", cache)
    with _pool_lock:
        free = _pool.setdefault(model, [])
        if all(c is not owner for c in free):
            free.append(owner)
            free.sort(key=lambda c: len(c.lengths))
            del free[:-2]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_MARGIN = 1.1  # dtype=auto takes bf16 only when it decodes this much faster: a tie keeps fp32's exact numbers


def choose_dtype(model: GPT, *, batch: int = 1, tokens: int = 16, use_cache: bool = True) -> tuple[torch.dtype, dict]:
    """The faster of fp32 and bf16 for decoding with this model here, measured: `tokens` greedy
    tokens at `batch` rows, both dtypes in turns, best of three; bf16 only when at least
    BF16_MARGIN times faster. Cached per machine, kernels, model shape and batch
    (lightning_llm/measured.py). fp32 without measuring where bf16 is not native."""
    from lightning_llm.measured import interleaved_best, lookup, machine, native_bf16, store
    from lightning_llm.model.layout import can_pack

    device = next(model.parameters()).device
    if not native_bf16(device):
        return torch.float32, {"reason": f"bf16 is not native on {machine(device)}"}
    kernels = "oneDNN packed" if device.type == "cpu" and can_pack(torch.bfloat16) else "default"  # what was timed
    weights = sorted({type(p.data).__name__ for p in model.parameters()})  # a quantized model is timed apart
    key = f"{machine(device)}, batch {batch}, kernels {kernels}, weights {weights}, " \
          f"{sorted(model.config.to_dict().items())}"
    if use_cache and (found := lookup("decode_dtype", key)):
        return DTYPES[found["choice"]], found
    prompt = [[1] * 4] * batch
    tokens = max(1, min(tokens, model.config.block_size - 5))
    copies = {name: copy_for_inference(model, dtype) for name, dtype in DTYPES.items()}

    def decode(m):
        for _ in stream(m, prompt, max_new_tokens=tokens, temperature=0):
            pass

    best = interleaved_best({name: (lambda m=m: decode(m)) for name, m in copies.items()}, device=device)
    rates = {name: round(batch * tokens / seconds, 1) for name, seconds in best.items()}
    choice = "bfloat16" if rates["bfloat16"] >= BF16_MARGIN * rates["float32"] else "float32"
    figures = {"choice": choice, "tokens_per_s": rates, "machine": machine(device)}
    if use_cache:
        store("decode_dtype", key, figures)
    return DTYPES[figures["choice"]], figures


def copy_for_inference(model: GPT, dtype: torch.dtype) -> GPT:
    return prepare_for_inference(copy.deepcopy(model), dtype)


def prepare_for_inference(model: GPT, dtype: torch.dtype) -> GPT:
    """Make the model an inference-only one, in place, once, at load (the checkpoint on disk is
    untouched): cast its weights to `dtype` (bf16 halves the bytes each decode step streams;
    RoPE's angle tables stay fp32, since positions need the precision), and on a CPU store each
    linear layer's weight in the layout a decode step streams fastest (model/layout.py: oneDNN's
    packed format, and MKL's laid-out one for single fp32 rows; the same outputs to rounding,
    1.1-3.4x faster products than nn.Linear's). A prepared model is for inference only: cast
    again it packs again; moved off the CPU it is refused (model/layout.py)."""
    from lightning_llm.model.layout import lay_out

    model.to(dtype)
    for name in ("rope_cos", "rope_sin"):
        if getattr(model, name, None) is not None:
            setattr(model, name, getattr(model, name).float())
    lay_out(model)
    return model


def inference_dtype(model: GPT, name: str, *, batch: int = 1) -> tuple[torch.dtype, str]:
    """The dtype of a `dtype` option (float32 | bfloat16 | auto) and a line saying why:
    bfloat16 is refused (ValueError) where the chip does not run it natively (emulated bf16 is
    several times slower); auto measures (choose_dtype)."""
    from lightning_llm.measured import machine, native_bf16

    device = next(model.parameters()).device
    if name not in (*DTYPES, "auto"):
        raise ValueError(f"dtype must be float32, bfloat16 or auto, got {name!r}")
    if name == "bfloat16" and not native_bf16(device):
        raise ValueError(f"dtype=bfloat16: {machine(device)} has no native bf16 (it would be emulated, several "
                         "times slower than float32); use float32 or auto")
    if name != "auto":
        return DTYPES[name], f"dtype {name}"
    dtype, figures = choose_dtype(model, batch=batch)
    rates = ", ".join(f"{k} {v:,.0f}" for k, v in figures.get("tokens_per_s", {}).items())
    why = f"measured tokens/s at batch {batch}: {rates}" if rates else figures["reason"]
    return dtype, f"dtype auto: {str(dtype).removeprefix('torch.')} ({why})"
