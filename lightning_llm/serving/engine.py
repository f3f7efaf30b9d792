"""The continuous-batching engine: concurrent requests decoded together, one forward per step.

One background thread owns the model and a `generation.Batch` of up to max_batch_size rows.
Each loop turn it drops cancelled rows, prefills waiting requests into free rows (they join
this step), runs one decode step over every row, and hands each request its token. A finished
or cancelled request leaves at once and frees its row for the next one in the queue. Greedy
results do not depend on the company a request keeps, and a seeded request samples from its
own generator, so batching changes no result. With batching=False requests run one at a time.

Consumers read a RequestHandle: `events()` blocks (threads, tests), `abatches()` awaits (the
HTTP server) the events that came since it last looked, all together: the engine thread wakes
an awaiting consumer with loop.call_soon_threadsafe, once per wait rather than per token, and
nothing polls.
Abandoning either iteration before the last event cancels the request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import torch

from lightning_llm.model.generation import Batch, Row, check_prompt

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # None: none; N >= 0: the chosen token's logprob and the top-N alternatives
    prompt_logprobs: bool = False  # echo: logprobs of the prompt's own tokens (from the prefill)
    stop_token_ids: tuple[int, ...] = ()

    def check(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be at least 0, got {self.max_tokens}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number of at least 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be at least 0, got {self.logprobs}")


@dataclass
class TokenEvent:
    token_id: int | None  # None only on a final event that carries no token
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # None while running; "stop" | "length" | "cancelled" | "error"


class QueueFull(Exception):
    """submit() found the bounded queue full: try again later."""


class EngineClosed(RuntimeError):
    """submit() after shutdown began."""


class RequestHandle:
    """One submitted request: its events as they come, and what its prefill measured.

    prompt_logprobs (when asked) and prompt_loss are set before the first event. A stop token
    (eos_id or stop_token_ids) comes as the final event's token_id with finish_reason "stop";
    "cancelled" and "error" events carry no token.

    The engine thread only appends to the handle's buffer; it wakes an asyncio consumer only when
    that consumer waits for it (one loop.call_soon_threadsafe per wait, not per token), so the
    events that pile up meanwhile are taken together (`abatches`)."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams):
        self.engine, self.prompt, self.params = engine, prompt, params
        self.prompt_logprobs: list[tuple[float, list[tuple[int, float]]] | None] | None = None
        self.prompt_loss: float | None = None  # mean NLL per prompt token after the first, from the prefill
        self.row: Row | None = None  # the engine's, while decoding
        self.cancelled = False
        self.finished = False  # the final event was delivered
        self.lock = threading.Condition()
        self.buffer: collections.deque[TokenEvent] = collections.deque()  # at most max_tokens + 1 events
        # An asyncio consumer waiting for events: (its loop, the future to resolve, final events only).
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future, bool] | None = None

    def cancel(self) -> None:
        """Stop this request: the engine drops it before its next step (a queued one at once)."""
        self.engine.cancel(self)

    def deliver(self, event: TokenEvent) -> None:
        """Called by the engine thread (or by cancel for a queued request)."""
        with self.lock:
            if self.finished:
                return
            self.finished = event.finish_reason is not None
            self.buffer.append(event)
            self.lock.notify()
            waiter = self.waiter
            if waiter is None or (waiter[2] and not self.finished):
                return
            self.waiter = None
        try:
            waiter[0].call_soon_threadsafe(_resolve, waiter[1])
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            pass

    def events(self) -> Iterator[TokenEvent]:
        """Events until the final one (finish_reason set), blocking between them."""
        done = False
        try:
            while not done:
                with self.lock:
                    while not self.buffer:
                        self.lock.wait()
                    event = self.buffer.popleft()
                done = event.finish_reason is not None
                yield event
        finally:
            if not done:
                self.cancel()

    async def abatches(self, interval: float = 0.0) -> AsyncIterator[list[TokenEvent]]:
        """The events until the final one, awaited in the caller's event loop, in lists of those
        that came since the last. With `interval` (seconds), a list follows the previous one no
        sooner than that unless it holds the final event: the first and the last are never held
        back, and the tokens in between travel together."""
        loop = asyncio.get_running_loop()
        done, last = False, None
        try:
            while not done:
                events = await self.take(loop, None if last is None or interval <= 0 else last + interval)
                last = loop.time()
                done = events[-1].finish_reason is not None
                yield events
        finally:
            if not done:
                self.cancel()

    async def take(self, loop: asyncio.AbstractEventLoop, hold_until: float | None) -> list[TokenEvent]:
        """Every buffered event, once there is one and hold_until (loop time) has passed or the
        final event came."""
        while True:
            with self.lock:
                held = hold_until is not None and loop.time() < hold_until
                if self.buffer and (self.finished or not held):
                    events = list(self.buffer)
                    self.buffer.clear()
                    return events
                future = loop.create_future()
                self.waiter = (loop, future, held)
            timer = loop.call_at(hold_until, _resolve, future) if held else None
            try:
                await future
            finally:
                if timer is not None:
                    timer.cancel()
                with self.lock:
                    if self.waiter is not None and self.waiter[1] is future:
                        self.waiter = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Engine:
    """Continuous batching over one model (see the module docstring).

    slide=False (the default) ends a request with "length" when prompt and completion fill the
    model's window; slide=True continues it from the last half window instead. prompt_loss
    scores every prompt during its prefill (RequestHandle.prompt_loss), for drift monitoring.
    on_step(batch_size) is called after every decode step on the engine thread; stats() also
    returns the batch sizes since its last call.
    """

    def __init__(self, model, *, max_batch_size: int = 8, max_queue: int = 64, eos_id: int | None = None,
                 batching: bool = True, slide: bool = False, prompt_loss: bool = True,
                 on_step: Callable[[int], None] | None = None):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be at least 1, got {max_batch_size}, {max_queue}")
        self.model, self.eos_id, self.slide, self.prompt_loss = model, eos_id, slide, prompt_loss
        self.max_batch_size = max_batch_size if batching else 1
        self.max_queue, self.on_step = max_queue, on_step
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.lock = threading.Condition()
        self.queue: collections.deque[RequestHandle] = collections.deque()
        self.cancelled: list[RequestHandle] = []  # running requests to drop at the next step
        self.running: list[RequestHandle] = []
        self.accepting = True  # until shutdown; requests submitted before start() wait in the queue
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run
        self.tokens = 0  # tokens generated
        self.recent_batch_sizes: collections.deque[int] = collections.deque(maxlen=100_000)

    # --- what clients call -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread that owns the model and runs the loop."""
        with self.lock:
            if self.thread is not None or self.stopping:
                raise RuntimeError("the engine was started already")
            self.thread = threading.Thread(target=self.loop, name="llm-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Queue a request. ValueError for a prompt that does not fit the context or bad params;
        QueueFull when max_queue requests are waiting; EngineClosed when not accepting."""
        if not self.accepting:  # checked again under the lock; a retired engine has no model left to check with
            raise EngineClosed("the engine is shutting down")
        params.check()
        prompt_ids = [int(t) for t in prompt_ids]
        check_prompt(prompt_ids, self.block_size, slide=self.slide, max_new_tokens=params.max_tokens)
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"the prompt holds a token id outside the vocabulary 0..{vocab - 1}")
        handle = RequestHandle(self, prompt_ids, params)
        with self.lock:
            if not self.accepting:
                raise EngineClosed("the engine is shutting down")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"{len(self.queue)} requests are waiting (max_queue {self.max_queue})")
            self.queue.append(handle)
            self.lock.notify_all()
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        with self.lock:
            if handle.finished or handle.cancelled:
                return
            handle.cancelled = True
            if handle in self.queue:  # never started: it leaves the queue now
                self.queue.remove(handle)
                handle.deliver(TokenEvent(None, finish_reason="cancelled"))
                self.lock.notify_all()  # shutdown() waits for the queue to empty
            else:
                self.cancelled.append(handle)
                self.lock.notify_all()

    def close(self) -> None:
        """Refuse new requests from now on; those queued and running go on."""
        with self.lock:
            self.accepting = False

    def shutdown(self, *, drain_timeout: float) -> None:
        """Refuse new requests, let queued and running ones finish for up to drain_timeout
        seconds, cancel what is left, and stop the thread."""
        deadline = time.monotonic() + drain_timeout
        with self.lock:
            self.accepting = False
            while (self.queue or self.running) and self.thread is not None and self.thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            self.stopping = True
            for handle in list(self.queue):
                handle.cancelled = True
                handle.deliver(TokenEvent(None, finish_reason="cancelled"))
            self.queue.clear()
            self.cancelled.extend(h for h in self.running if not h.cancelled)
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join()

    def stats(self) -> dict:
        """queue_depth, active, steps, tokens, and batch_sizes: the size of every decode step
        since the last call (at most 100,000 of them)."""
        with self.lock:
            sizes = list(self.recent_batch_sizes)
            self.recent_batch_sizes.clear()
            return {"queue_depth": len(self.queue), "active": len(self.running), "steps": self.steps,
                    "tokens": self.tokens, "batch_sizes": sizes}

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def active(self) -> int:
        return len(self.running)

    # --- the engine thread -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """The engine thread is running (it was started and has not stopped)."""
        return self.thread is not None and self.thread.is_alive()

    def loop(self) -> None:
        """The engine thread. However it ends, no request is left waiting: if it dies (a bug, not
        a failed step, which fails only its requests), it refuses new requests and ends every
        queued and running one with "error"."""
        try:
            self.run()
        except BaseException:
            log.exception("the engine stopped: its requests end with an error and new ones are refused")
        finally:
            with self.lock:
                self.accepting = False
                left = [*self.queue, *self.running]
                self.queue.clear()
                self.running = []
                self.lock.notify_all()
            for handle in left:
                handle.row = None
                handle.deliver(TokenEvent(None, finish_reason="error"))

    def run(self) -> None:
        with torch.inference_mode():
            batch = self.new_batch()
            while True:
                with self.lock:
                    while not (self.queue or self.running or self.stopping):
                        self.lock.wait()
                    cancelled, self.cancelled = self.cancelled, []
                    for handle in cancelled:
                        if handle.row is not None and handle in self.running:
                            batch.remove(handle.row)
                            self.running.remove(handle)
                            handle.row = None
                    if cancelled:
                        self.lock.notify_all()  # shutdown() waits for running requests to end
                    admitted = []
                    while self.queue and len(self.running) + len(admitted) < self.max_batch_size:
                        admitted.append(self.queue.popleft())
                    self.running += admitted
                    done = self.stopping and not self.running
                for handle in cancelled:
                    handle.deliver(TokenEvent(None, finish_reason="cancelled"))
                if done:
                    return
                try:
                    if admitted:
                        self.admit(batch, admitted)
                    if batch.rows:
                        self.step(batch)
                except Exception:  # a failed forward fails the requests in it, not the engine
                    log.exception("the engine failed a step; its %d requests end with an error", len(self.running))
                    with self.lock:
                        failed, self.running = self.running, []
                        self.lock.notify_all()
                    batch = self.new_batch()
                    for handle in failed:
                        handle.row = None
                        handle.deliver(TokenEvent(None, finish_reason="error"))

    def new_batch(self) -> Batch:
        return Batch(self.model, self.max_batch_size, eos_id=self.eos_id, slide=self.slide,
                     prompt_loss=self.prompt_loss)

    def admit(self, batch: Batch, handles: list[RequestHandle]) -> None:
        """Prefill the new requests into free rows; they decode from this step on."""
        for handle in handles:
            p = handle.params
            generator = None
            if p.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(p.seed)
            handle.row = Row(handle.prompt, p.max_tokens, p.temperature, p.top_k, p.top_p, generator,
                             tuple((t,) for t in p.stop_token_ids), p.logprobs, p.prompt_logprobs, key=handle)
        done = batch.add([handle.row for handle in handles])
        for handle in handles:
            handle.prompt_logprobs, handle.prompt_loss = handle.row.prompt_logprobs, handle.row.prompt_loss
        for token in done:  # max_tokens=0: the prompt was scored, nothing is generated
            self.finish(token.row)
            token.row.deliver(TokenEvent(None, finish_reason=token.finish_reason))

    def step(self, batch: Batch) -> None:
        size = len(batch)
        tokens = batch.step()
        for token in tokens:
            if token.finish_reason is not None:
                self.finish(token.row)
            token.row.deliver(TokenEvent(token.id, token.logprob, token.top_logprobs, token.finish_reason))
        with self.lock:
            self.steps += 1
            self.tokens += len(tokens)
            self.recent_batch_sizes.append(size)
        if self.on_step is not None:
            try:
                self.on_step(size)
            except Exception:  # a metrics hook must not fail the requests
                log.exception("on_step failed")

    def finish(self, handle: RequestHandle) -> None:
        with self.lock:
            handle.row = None
            self.running.remove(handle)
            self.lock.notify_all()  # shutdown() waits for running requests to end
