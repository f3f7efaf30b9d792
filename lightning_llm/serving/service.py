"""What the server does with a request, apart from HTTP: prompts to token ids, sequences submitted
to the engine, their token events turned into text (stop strings, logprobs), and OpenAI bodies.

One Service per model (per replica; `registry=` swaps it for the next version, see follow.py): the
model, its engine (the continuous batch) and the response cache live here; the metrics are the
process's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lightning_llm.data.tokenizer import EOT, UNK
from lightning_llm.errors import UserError
from lightning_llm.model.generation import inference_dtype, prepare_for_inference
from lightning_llm.model.io import Artifact
from lightning_llm.serving.cache import ResponseCache, cache_key, deterministic
from lightning_llm.serving.engine import Engine, EngineClosed, QueueFull, RequestHandle, SamplingParams
from lightning_llm.serving.metrics import Metrics
from lightning_llm.serving.protocol import APIError, ChatRequest, CompletionRequest, SamplingFields
from lightning_llm.serving.settings import ServeSettings
from lightning_llm.serving.text import IncrementalDecoder, StopMatcher, special_tokens, token_text
from lightning_llm.templates import ChatTemplate, MessageError, known_templates, load_template, model_template

RETRY_AFTER_S = "1"
log = logging.getLogger(__name__)


@dataclass
class Sequence:
    """One choice being generated: the engine's events become released text, cut at a stop string."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    handle: RequestHandle
    decoder: IncrementalDecoder
    stops: StopMatcher
    stop_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list[list[tuple[int, float]] | None] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    first_token_at: float | None = None
    reported: int = 0  # tokens that went with the deltas so far

    async def deltas(self, interval: float = 0.0) -> AsyncIterator[tuple[str, int]]:
        """(new text, start) until the sequence ends, where the delta stands for tokens[start:]
        (with any whose text was held back before); the last delta comes with finish_reason set. The tokens that came together (no sooner than
        `interval` seconds after the last delta, see RequestHandle.abatches) make one delta. A
        sequence left unfinished is cancelled."""
        try:
            async for events in self.handle.abatches(interval):
                pieces = []
                for event in events:
                    if event.token_id is not None and event.finish_reason not in ("cancelled", "error"):
                        if self.first_token_at is None:
                            self.first_token_at = time.perf_counter()
                        self.tokens.append(event.token_id)
                        self.logprobs.append(event.logprob)
                        self.tops.append(event.top_logprobs)
                        if event.token_id not in self.stop_ids:
                            piece, stopped = self.stops.push(self.decoder.push(event.token_id))
                            pieces.append(piece)
                            if stopped:
                                self.handle.cancel()  # a stop string ends it here: the engine computes no more
                                self.finish_reason = "stop"
                                break
                    if event.finish_reason is not None:
                        pieces.append(self.stops.flush())
                        self.finish_reason = event.finish_reason
                piece = "".join(pieces)
                self.text += piece
                if piece or self.finish_reason is not None:
                    # tokens whose text was held back (a possible stop string, half a character)
                    # go with this delta: start counts the tokens that went with earlier ones
                    start, self.reported = self.reported, len(self.tokens)
                    yield piece, start
                if self.finish_reason is not None:
                    return
        finally:
            if self.finish_reason is None:
                self.handle.cancel()
                self.finish_reason = "cancelled"


@dataclass
class Job:
    """A request's sequences and what its answer needs to know."""

    kind: str  # "completion" | "chat"
    id: str
    created: int
    model: str
    prompts: list[list[int]]
    sequences: list[Sequence]
    arrived: float
    echo_texts: list[str] | None = None  # completions with echo: the text of each prompt
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    include_usage: bool = False
    expired: bool = False  # serve.request_timeout ran out
    citations: list[dict] | None = None  # chat with `rag`: the passages put in the prompt (the first chunk carries them)
    citations_sent: bool = False
    client_gone: bool = False  # the client hung up before the answer (a non-streamed request)

    def cancel(self) -> None:
        for seq in self.sequences:
            if seq.finish_reason is None:
                seq.handle.cancel()

    def expire(self) -> None:
        self.expired = True
        self.cancel()


class Service:
    """One replica: the model's engine, the tokenizer, the cache and the metrics, and every
    request's way from its pydantic body to the engine and back to an OpenAI body."""

    def __init__(self, artifact: Artifact, settings: ServeSettings, *, metrics: Metrics | None = None,
                 index=None):
        self.settings = settings
        self.tokenizer = artifact.tokenizer
        self.model_name = settings.model_name or model_name_of(artifact.path)
        # The registry version this model is (its manifest says so), for drift metrics and responses.
        info = artifact.manifest.get("registry") or {}
        self.registry, self.version = info.get("name"), info.get("version")
        self.context = artifact.config.block_size
        self.vocab = min(artifact.config.vocab_size, self.tokenizer.get_vocab_size(with_added_tokens=True))
        self.specials = special_tokens(self.tokenizer)
        self.eos_id = self.tokenizer.token_to_id(EOT)
        self.unk_id = self.tokenizer.token_to_id(UNK)
        # Chat templates: the model's own (recorded in its manifest), the server's default for requests
        # that name none (serve.chat_template as "custom", else template=<name>, else the model's), and
        # any conf/template/ name a request gives.
        self.model_template = model_template(artifact.manifest)
        if settings.chat_template:
            self.default_template = ChatTemplate(name="custom", source=settings.chat_template)
        elif settings.template:
            self.default_template = load_template(settings.template)
        else:
            self.default_template = self.model_template
        self.chat_template = self.default_template.source
        self.index = index  # the stage's (or the replaced version's), so it is read once
        if self.index is None and settings.rag_dir is not None:
            from lightning_llm.rag import load_index

            self.index = load_index(settings.rag_dir)
        self.metrics = metrics or Metrics()
        self.cache = ResponseCache(settings.cache_size)
        try:  # weights cast once here (bf16 halves the bytes a decode step reads); the file is untouched
            dtype, why = inference_dtype(artifact.model, settings.dtype, batch=settings.max_batch_size)
        except ValueError as err:
            raise UserError(f"serve.{err}") from None
        prepare_for_inference(artifact.model, dtype)
        log.info("model weights: %s", why)
        self.engine = Engine(artifact.model, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
                             eos_id=self.eos_id, batching=settings.batching, slide=settings.slide,
                             on_step=self.on_step)
        self.warm = False  # warmed up and not stopping
        self.engines = lambda: [self.engine]  # what the queue and batch gauges add up (a Hub sets its own)
        self.created = int(time.time())

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine and run one short generation through it, so the first client waits
        for no lazy initialisation. If that fails, the engine is stopped before the error goes up."""
        self.engine.start()
        try:
            if self.settings.warmup:
                prompt = [self.eos_id if self.eos_id is not None else 0] * max(1, min(8, self.context // 2))
                params = SamplingParams(max_tokens=min(4, self.context - len(prompt)), temperature=0.0, logprobs=1,
                                        prompt_logprobs=True)
                last = list(self.engine.submit(prompt, params).events())[-1]
                if last.finish_reason not in ("stop", "length"):  # a model that cannot generate never says ready
                    raise RuntimeError(f"the warm-up generation ended with {last.finish_reason!r} "
                                       "(the log says why)")
        except BaseException:
            self.engine.shutdown(drain_timeout=0)
            raise
        self.warm = True

    @property
    def ready(self) -> bool:
        """Answering requests: warmed up, not stopping, and the engine alive (/health says so)."""
        return self.warm and self.engine.alive

    def stop(self, drain_timeout: float | None = None) -> None:
        """Refuse new requests, let those in the engine finish (serve.drain_timeout by default), stop."""
        self.warm = False
        self.engine.shutdown(drain_timeout=self.settings.drain_timeout if drain_timeout is None else drain_timeout)

    def retire(self) -> None:
        """Replaced by another version: the requests already in the engine finish (as long as
        serve.request_timeout lets any request take), then the engine stops and the model goes: its
        weights move to the meta device, so even a reference left somewhere holds no memory."""
        self.stop(self.settings.request_timeout)
        device, model = self.engine.device, self.engine.model
        self.engine.model = None
        if model is not None:
            model.to("meta")  # parameters and buffers (the laid-out weights) alike
        del model
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def on_step(self, batch_size: int) -> None:
        """After every decode step, on the engine's thread: the batch size, the queue, the batch."""
        self.metrics.batch_size.observe(batch_size)
        self.sample_engine()

    def sample_engine(self) -> None:
        engines = self.engines()
        self.metrics.queue_depth.set(sum(e.queue_depth for e in engines))
        self.metrics.active.set(sum(e.active for e in engines))

    # --- requests -------------------------------------------------------------------------------

    def check_common(self, request: SamplingFields) -> None:
        s = self.settings
        if request.model is not None and request.model != self.model_name:
            raise APIError(404, f"model {request.model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        unsupported = request.unsupported()
        if unsupported:
            raise APIError(400, f"{unsupported[0]} is not supported by this server", param=unsupported[0],
                           code="unsupported_parameter")
        if request.n > s.max_n:
            raise APIError(400, f"n={request.n} is more than this server allows ({s.max_n})", param="n")
        stops = request.stop_list()
        if len(stops) > s.max_stop or any(not stop for stop in stops):
            raise APIError(400, f"stop takes at most {s.max_stop} non-empty strings", param="stop")

    def encode(self, text: str, param: str) -> list[int]:
        """A text prompt's ids; an empty prompt starts a new document. A character the tokenizer
        never saw is refused rather than scored as <|unk|>."""
        if not text:
            return [self.eos_id]
        encoding = self.tokenizer.encode(text)
        if self.unk_id is not None and self.unk_id in encoding.ids:
            unseen = sorted({text[a:b] for t, (a, b) in zip(encoding.ids, encoding.offsets) if t == self.unk_id})
            raise APIError(400, f"{param} has characters the tokenizer does not know: "
                           f"{' '.join(repr(c) for c in unseen)}", param=param)
        return encoding.ids

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError(400, f"{param} is empty", param=param)
        bad = next((t for t in ids if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise APIError(400, f"{param}: token id {bad} is outside the vocabulary (0..{self.vocab - 1})",
                           param=param)
        return ids

    def check_length(self, prompts: list[list[int]], max_tokens: int, *, given: bool, param: str,
                     prompt_param: str) -> int:
        """max_tokens as it fits the context: a prompt that leaves no room, or a max_tokens the
        client asked for that does not fit, is a 400 naming the field."""
        longest = max(len(p) for p in prompts)
        slide = self.settings.slide
        if longest > self.context or (longest == self.context and max_tokens > 0 and not slide):
            raise APIError(400, f"the prompt is {longest} tokens; this model's context is {self.context} tokens",
                           param=prompt_param, code="context_length_exceeded")
        room = self.context - longest
        if max_tokens > room and not slide:
            if given:
                raise APIError(400, f"{param}={max_tokens} does not fit: the prompt is {longest} tokens and this "
                               f"model's context is {self.context} (at most {room} more)", param=param,
                               code="context_length_exceeded")
            max_tokens = room
        return max_tokens

    def params(self, request: SamplingFields, *, max_tokens: int, seed_offset: int, logprobs: int | None,
               prompt_logprobs: bool) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p, top_k=request.top_k,
            seed=None if request.seed is None else (request.seed + seed_offset) % (2**63),
            logprobs=logprobs, prompt_logprobs=prompt_logprobs)

    def check_logprobs(self, n: int | None, param: str) -> None:
        if n is not None and n > self.settings.max_logprobs:
            raise APIError(400, f"{param}={n} is more than this server allows ({self.settings.max_logprobs})",
                           param=param)

    def completion_job(self, request: CompletionRequest, arrived: float) -> Job:
        s = self.settings
        self.check_common(request)
        self.check_logprobs(request.logprobs, "logprobs")
        prompt = request.prompt
        if isinstance(prompt, str):
            prompts = [self.encode(prompt, "prompt")]
        elif not prompt:
            raise APIError(400, "prompt is an empty list", param="prompt")
        elif isinstance(prompt[0], str):
            prompts = [self.encode(p, "prompt") for p in prompt]
        elif isinstance(prompt[0], int):
            prompts = [self.check_ids(list(prompt), "prompt")]
        else:
            prompts = [self.check_ids(list(p), "prompt") for p in prompt]
        if len(prompts) > s.max_prompts:
            raise APIError(400, f"{len(prompts)} prompts in one request; this server takes at most {s.max_prompts}",
                           param="prompt")
        if len(prompts) * request.n > s.max_queue:
            raise APIError(400, f"{len(prompts)} prompts x n={request.n} is more sequences than this server queues "
                           f"({s.max_queue})", param="n")
        given = request.max_tokens is not None
        max_tokens = request.max_tokens if given else s.default_max_tokens
        if max_tokens > s.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is more than this server allows ({s.max_tokens})",
                           param="max_tokens")
        if max_tokens == 0 and not request.echo:
            raise APIError(400, "max_tokens=0 needs echo=true (it scores the prompt and generates nothing)",
                           param="max_tokens")
        max_tokens = self.check_length(prompts, max_tokens, given=given, param="max_tokens", prompt_param="prompt")
        want_prompt_logprobs = request.echo and request.logprobs is not None
        echo_texts = None
        if request.echo:
            echo_texts = [prompt if isinstance(prompt, str) else
                          (prompt[i] if isinstance(prompt[0], str) else self.tokenizer.decode(ids))
                          for i, ids in enumerate(prompts)]
        job = Job(kind="completion", id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_name,
                  prompts=prompts, sequences=[], arrived=arrived, echo_texts=echo_texts, logprobs=request.logprobs,
                  include_usage=bool(request.stream_options and request.stream_options.include_usage))
        jobs = [(i * request.n + j, i, ids, self.params(request, max_tokens=max_tokens, seed_offset=j,
                                                     logprobs=request.logprobs, prompt_logprobs=want_prompt_logprobs))
                for i, ids in enumerate(prompts) for j in range(request.n)]
        self.submit(job, jobs, request.stop_list(), frozenset({self.eos_id}))
        return job

    def chat_job(self, request: ChatRequest, arrived: float) -> Job:
        s = self.settings
        self.check_common(request)
        self.check_logprobs(request.top_logprobs, "top_logprobs")
        if request.top_logprobs is not None and not request.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        if request.n > s.max_queue:
            raise APIError(400, f"n={request.n} is more sequences than this server queues ({s.max_queue})", param="n")
        template = self.template(request.template)
        # OpenAI's `developer` messages are what `system` messages were: templates render them as such.
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                     **({"name": m.name} if m.name else {})} for m in request.messages]
        try:
            template.check(messages)
        except MessageError as err:
            raise APIError(400, str(err), param=err.param, code="invalid_value") from None
        given = request.max_completion_tokens or request.max_tokens
        hits = self.retrieve(request, messages, template)
        prompt, hits = self.chat_prompt(template, messages, hits, room=given or 1)
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        max_tokens = given if given is not None else s.max_tokens
        if given is not None and given > s.max_tokens:
            raise APIError(400, f"{param}={given} is more than this server allows ({s.max_tokens})", param=param)
        max_tokens = self.check_length([prompt], max_tokens, given=given is not None, param=param,
                                       prompt_param="messages")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        job = Job(kind="chat", id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_name,
                  prompts=[prompt], sequences=[], arrived=arrived, logprobs=logprobs,
                  include_usage=bool(request.stream_options and request.stream_options.include_usage),
                  citations=None if hits is None else [hit.citation() for hit in hits])
        jobs = [(j, 0, prompt, self.params(request, max_tokens=max_tokens, seed_offset=j, logprobs=logprobs,
                                        prompt_logprobs=False)) for j in range(request.n)]
        self.submit(job, jobs, request.stop_list(), frozenset({self.eos_id}))
        return job

    # --- templates and retrieval -------------------------------------------------------------------

    def template(self, name: str | None) -> ChatTemplate:
        """The template a request names (null: the server's default); an unknown name is a 400."""
        if name is None or name == self.default_template.name:
            return self.default_template
        if name == self.model_template.name:
            return self.model_template
        try:
            return load_template(name)
        except Exception as err:  # UserError: not a name, not a file; a broken file says why
            raise APIError(400, str(err), param="template", code="invalid_value") from None

    def template_names(self) -> list[str]:
        return sorted({*known_templates(), self.default_template.name, self.model_template.name})

    def retrieve(self, request: ChatRequest, messages: list[dict], template: ChatTemplate) -> list | None:
        """The passages for a request with `rag` (or whose template asks for them, where there is an
        index), best first; None: nothing asked for retrieval."""
        s = self.settings
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")  # the last user turn
        if request.rag is None:
            if not template.rag_top_k or self.index is None:
                return None
            return self.index.search(query, min(template.rag_top_k, s.rag_max_top_k)) if query.strip() else []
        if self.index is None:
            raise APIError(400, "rag: this server has no index (start it with rag.index=<name>, built by `llm index`)",
                           param="rag", code="invalid_value")
        top_k = request.rag.top_k or s.rag_top_k
        if top_k > s.rag_max_top_k:
            raise APIError(400, f"rag.top_k={top_k} is more than this server allows ({s.rag_max_top_k})",
                           param="rag.top_k", code="invalid_value")
        if not query.strip():
            raise APIError(400, "rag needs a user message to search for", param="rag", code="invalid_value")
        return self.index.search(query, top_k)

    def chat_prompt(self, template: ChatTemplate, messages: list[dict], hits: list | None, *,
                    room: int) -> tuple[list[int], list | None]:
        """The prompt's ids with as many of the passages as fit: the lowest-scored go first until the
        prompt leaves `room` tokens of the context (without passages, check_length judges it)."""
        hits = list(hits) if hits is not None else None
        while True:
            documents = None if not hits else \
                [{"title": self.known_text(f"{h.source}:{h.lines[0]}-{h.lines[1]}"), "text": self.known_text(h.text)}
                 for h in hits]
            try:
                text = template.render(messages, specials=self.specials, documents=documents)
            except MessageError as err:  # the template's own refusal (raise_exception)
                raise APIError(400, str(err), param=err.param, code="invalid_value") from None
            prompt = self.encode(text, "messages")
            if not hits or self.settings.slide or len(prompt) + room <= self.context:
                return prompt, hits
            hits.pop()

    def known_text(self, text: str) -> str:
        """A passage (or its file name) without the characters the tokenizer does not know (a retrieved
        file may hold any; a client's own text with them is refused instead)."""
        if self.unk_id is None:
            return text
        encoding = self.tokenizer.encode(text)
        cuts = [span for token, span in zip(encoding.ids, encoding.offsets) if token == self.unk_id]
        for start, end in reversed(cuts):
            text = text[:start] + text[end:]
        return text

    def submit(self, job: Job, jobs: list, stops: list[str], stop_ids: frozenset[int]) -> None:
        """Hand every sequence to the engine, or none: a full queue cancels those already in."""
        try:
            for index, prompt_index, ids, params in jobs:
                handle = self.engine.submit(ids, params)
                job.sequences.append(Sequence(index=index, prompt_index=prompt_index, prompt_ids=ids, handle=handle,
                                              decoder=IncrementalDecoder(self.tokenizer, ids),
                                              stops=StopMatcher(stops), stop_ids=stop_ids))
        except QueueFull:
            job.cancel()
            raise APIError(429, "the server is busy (its queue is full): retry shortly", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": RETRY_AFTER_S}) from None
        except ValueError as err:
            job.cancel()
            raise APIError(400, str(err), param="prompt") from None
        except EngineClosed as err:
            job.cancel()
            raise APIError(503, f"the server is shutting down ({err})", type="server_error", code="unavailable",
                           headers={"Retry-After": RETRY_AFTER_S}) from None

    def key(self, endpoint: str, request: SamplingFields) -> str | None:
        if self.settings.cache_size == 0 or not deterministic(request):
            return None
        return cache_key(endpoint, request, self.model_name)

    # --- running ---------------------------------------------------------------------------------

    async def stream(self, job: Job) -> AsyncIterator[tuple[Sequence, str, int]]:
        """(sequence, new text, tokens before it) as any of the job's sequences moves on."""
        interval = self.settings.stream_interval
        if len(job.sequences) == 1:
            seq = job.sequences[0]
            async for piece, start in seq.deltas(interval):
                yield seq, piece, start
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(seq: Sequence):
            try:
                async for piece, start in seq.deltas(interval):
                    queue.put_nowait((seq, piece, start))
                queue.put_nowait((seq, None, 0))
            except Exception as err:  # handed to the reader, which raises it
                queue.put_nowait((seq, err, 0))

        tasks = [asyncio.create_task(pump(seq)) for seq in job.sequences]
        try:
            running = len(tasks)
            while running:
                seq, piece, start = await queue.get()
                if piece is None:
                    running -= 1
                elif isinstance(piece, Exception):
                    raise piece
                else:
                    yield seq, piece, start
        finally:
            for task in tasks:
                task.cancel()
            job.cancel()

    async def run(self, job: Job) -> None:
        """Generate every sequence to its end."""
        async for _ in self.stream(job):
            pass

    def account(self, job: Job) -> None:
        """Count what the job computed, however it ended, and each of its prompts' loss (drift):
        once per prompt, from the first of its sequences the engine prefilled."""
        m = self.metrics
        m.generated_tokens.inc(sum(len(seq.tokens) for seq in job.sequences))
        m.prompt_tokens.inc(sum(len(p) for p in job.prompts))
        firsts = [seq.first_token_at for seq in job.sequences if seq.first_token_at is not None]
        if firsts:
            m.ttft.observe(min(firsts) - job.arrived)
        scored = {}
        for seq in job.sequences:
            if seq.handle.prompt_loss is not None:
                scored.setdefault(seq.prompt_index, (seq.handle.prompt_loss, len(seq.prompt_ids) - 1))
        for loss, tokens in scored.values():
            m.record_prompt(self.registry or "", self.version or "", loss=loss, tokens=tokens)

    def failure(self, job: Job) -> APIError | None:
        """The error to answer with when a sequence did not end normally."""
        reasons = {seq.finish_reason for seq in job.sequences}
        if job.client_gone and reasons - {"stop", "length"}:  # nobody reads it: counted as nginx counts it
            return APIError(499, "the client closed the request before its answer", type="client_closed_request",
                            code="client_closed")
        if job.expired and reasons - {"stop", "length"}:
            limit = self.settings.request_timeout
            return APIError(504, f"the request took longer than serve.request_timeout={limit} s",
                            type="timeout_error", code="timeout")
        if "error" in reasons:
            return APIError(500, "the engine failed while generating", type="server_error", code="engine_error")
        if "cancelled" in reasons:
            return APIError(503, "the generation was cancelled (the server is shutting down)", type="server_error",
                            code="unavailable", headers={"Retry-After": RETRY_AFTER_S})
        return None

    # --- bodies ----------------------------------------------------------------------------------

    def usage(self, job: Job) -> dict:
        prompt = sum(len(p) for p in job.prompts)
        completion = sum(len(seq.tokens) for seq in job.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion_logprobs(self, job: Job, seq: Sequence, start: int, *, with_prompt: bool) -> dict:
        """OpenAI's completions logprobs for the sequence's tokens from `start` on (and, with
        echo, its prompt's first): tokens, token_logprobs, top_logprobs, text_offset."""
        entries = []
        if with_prompt:
            scored = seq.handle.prompt_logprobs or [None] * len(seq.prompt_ids)
            entries += [(t, None if p is None else p[0], None if p is None else p[1])
                        for t, p in zip(seq.prompt_ids, scored)]
        entries += list(zip(seq.tokens[start:], seq.logprobs[start:], seq.tops[start:]))
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = 0 if with_prompt or start == 0 else len(self.tokenizer.decode(seq.tokens[:start]))
        for token, logprob, top in entries:
            text = token_text(self.tokenizer, token)
            out["tokens"].append(text)
            out["token_logprobs"].append(logprob)
            if logprob is None:
                out["top_logprobs"].append(None)
            else:
                alternatives = {token_text(self.tokenizer, t): lp for t, lp in (top or [])}
                alternatives.setdefault(text, logprob)  # the chosen token is always there, as in vLLM
                out["top_logprobs"].append(alternatives)
            out["text_offset"].append(offset)
            offset += len(self.tokenizer.decode([token], skip_special_tokens=True))
        return out

    def chat_logprobs(self, seq: Sequence, start: int) -> dict:
        def entry(token: int, logprob: float) -> dict:
            text = token_text(self.tokenizer, token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in (top or [])]}
                   for t, lp, top in zip(seq.tokens[start:], seq.logprobs[start:], seq.tops[start:])]
        return {"content": content, "refusal": None}

    def body(self, job: Job) -> dict:
        """The whole answer of a finished job."""
        choices = []
        for seq in sorted(job.sequences, key=lambda s: s.index):
            if job.kind == "completion":
                text = (job.echo_texts[seq.prompt_index] if job.echo_texts else "") + seq.text
                logprobs = None if job.logprobs is None else \
                    self.completion_logprobs(job, seq, 0, with_prompt=job.echo_texts is not None)
                choices.append({"index": seq.index, "text": text, "logprobs": logprobs,
                                "finish_reason": seq.finish_reason})
            else:
                choices.append({"index": seq.index, "message": {"role": "assistant", "content": seq.text},
                                "logprobs": None if job.logprobs is None else self.chat_logprobs(seq, 0),
                                "finish_reason": seq.finish_reason})
        obj = "text_completion" if job.kind == "completion" else "chat.completion"
        out = {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": choices,
               "usage": self.usage(job)}
        if job.citations is not None:  # the rag extension: beside the choices
            out["citations"] = job.citations
        return out

    def chunk(self, job: Job, choices: list[dict], usage: dict | None = None) -> dict:
        obj = "text_completion" if job.kind == "completion" else "chat.completion.chunk"
        out = {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": choices}
        if job.include_usage:
            out["usage"] = usage
        if job.citations is not None and not job.citations_sent:  # the first chunk carries them
            out["citations"] = job.citations
            job.citations_sent = True
        return out

    def delta_choice(self, job: Job, seq: Sequence, piece: str, start: int, *, first: bool) -> dict:
        finish = seq.finish_reason
        if job.kind == "completion":
            with_prompt = first and job.echo_texts is not None
            text = (job.echo_texts[seq.prompt_index] if with_prompt else "") + piece
            logprobs = None if job.logprobs is None else \
                self.completion_logprobs(job, seq, start, with_prompt=with_prompt)
            return {"index": seq.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        delta = {"content": piece} if piece else {}
        return {"index": seq.index, "delta": delta,
                "logprobs": None if job.logprobs is None else self.chat_logprobs(seq, start),
                "finish_reason": finish}


def replay(body: dict, *, include_usage: bool) -> list[dict]:
    """A cached answer as stream chunks: one per choice carrying all its text, then the usage."""
    chat = body["object"] == "chat.completion"
    head = {k: body[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    chunks = []
    for choice in body["choices"]:
        if chat:
            choice = {"index": choice["index"], "delta": {"role": "assistant", "content": choice["message"]["content"]},
                      "logprobs": choice["logprobs"], "finish_reason": choice["finish_reason"]}
        chunks.append({**head, "choices": [choice], **({"usage": None} if include_usage else {})})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    if "citations" in body and chunks:
        chunks[0]["citations"] = body["citations"]
    return chunks


def model_name_of(path: Path) -> str:
    """A served model's default name: its folder (a run dir's name rather than `model`)."""
    folder = path if path.is_dir() else path.parent
    if folder.name in ("model", "checkpoints"):
        folder = folder.parent
    return folder.name or "model"
