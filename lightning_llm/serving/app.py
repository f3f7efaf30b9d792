"""The HTTP side: a FastAPI app speaking OpenAI's wire format over a Service.

Routes: GET /v1/models, GET /v1/templates, POST /v1/completions, POST /v1/chat/completions, the tokenizer
endpoints vLLM serves (GET /tokenizer_info, POST /tokenize, POST /detokenize), GET /health
(no key), GET /metrics (no key, Prometheus text) and GET / (no key: the playground page, a
static client of the same API, from static/). One pure-ASGI guard in front of all of
them checks the API key and the body size before any work, and counts every answer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lightning_llm.serving.follow import Hub
from lightning_llm.serving.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    validation_error,
)
from lightning_llm.serving.service import Job, Service, replay

# The playground's files (URL path: file in static/, media type). The page holds no data and no key:
# it asks for the key and sends it with the API calls it makes.
PLAYGROUND = {"/": ("index.html", "text/html; charset=utf-8"),
              "/static/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
              "/static/playground.css": ("playground.css", "text/css; charset=utf-8")}
# Only this origin's script and style; the page talks to this server and nothing else.
PLAYGROUND_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
OPEN_PATHS = {"/health", "/metrics", *PLAYGROUND}  # what load balancers, scrapers and browsers reach without a key
ENDPOINTS = {"/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenizer_info", "/tokenize", "/detokenize",
             "/health", "/metrics", "/v1/templates", *PLAYGROUND}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Guard:
    """Pure ASGI middleware (so streaming and disconnects pass through untouched): a missing or
    wrong Bearer key is a 401 before the body is read; a body over the limit is a 413; every
    answer is counted by endpoint and status, and timed."""

    def __init__(self, app, *, hub: Hub, keys: list[str]):
        self.app, self.hub = app, hub
        self.keys = [key.encode() for key in keys]
        self.limit = hub.settings.max_body_bytes

    def authorized(self, scope) -> bool:
        if not self.keys or scope["path"] in OPEN_PATHS:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # Compare with every key, whatever matches: the time taken does not say which key is near.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return scheme.lower() == b"bearer" and any(matches)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived = time.perf_counter()
        scope.setdefault("state", {})["arrived"] = arrived
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if not self.authorized(scope):
                err = APIError(401, "a valid API key is required: send `Authorization: Bearer <key>`",
                               type="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                return await error_response(err)(scope, receive, counted_send)
            receive = await self.read_body(scope, receive)
            if receive is None:
                err = APIError(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
                return await error_response(err)(scope, self.nothing, counted_send)
            await self.app(scope, receive, counted_send)
        finally:
            code = status.get("code", 500)
            m = self.hub.metrics
            m.requests.labels(endpoint, str(code)).inc()
            if code >= 400:
                m.errors.labels(endpoint, str(code)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - arrived)

    @staticmethod
    async def nothing():
        return {"type": "http.disconnect"}

    async def read_body(self, scope, receive):
        """The whole body, read up to the limit and handed on; later messages (the client's
        disconnect) pass through. None when it is too large."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return None
        if scope["method"] in ("GET", "HEAD"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return lambda: _returns(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return None
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay_receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay_receive


async def _returns(message):
    return message


class EventStream(StreamingResponse):
    """Server-sent events whose end, however it comes (finished, client gone, server stopping),
    cancels what the job still has in the engine."""

    def __init__(self, content, *, job: Job | None, headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.job is not None:
                self.job.cancel()


async def replayed(chunks: list[bytes]):
    for chunk in chunks:
        yield chunk


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def create_app(service: Service | Hub) -> FastAPI:
    """The HTTP API over one service, or over a Hub's current one (`registry=`: it changes; each
    request keeps the service it started on)."""
    hub = service if isinstance(service, Hub) else Hub(service)
    settings = hub.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        following = await hub.start()
        current = hub.current
        version = f"; registry {current.registry} {current.version}" if current.version else ""
        print(f"serving {current.model_name} at http://{settings.host}:{settings.port}/v1 (pid {os.getpid()}{version})",
              flush=True)
        del current  # this frame lives as long as the server: it must not keep a replaced version's model
        try:
            yield
        finally:
            hub.closing = True
            if following is not None:
                following.cancel()
                await asyncio.wait([following])  # a version loading meanwhile finishes, then stops
            await asyncio.to_thread(hub.stop)

    app = FastAPI(title="lightning-llm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, hub=hub, keys=settings.all_api_keys())

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return error_response(validation_error(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                                       type=kind))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception):
        return error_response(APIError(500, f"internal error ({type(err).__name__})", type="server_error"))

    def arrived(request: Request) -> float:
        return request.scope.get("state", {}).get("arrived", time.perf_counter())

    def deadline(request: Request) -> float:
        """Seconds this request has left of serve.request_timeout."""
        return max(0.0, settings.request_timeout - (time.perf_counter() - arrived(request)))

    def available() -> Service:
        """The service a request goes to (and stays with): the current one, if it answers."""
        service = hub.current
        if not service.ready:
            raise APIError(503, "the server is not ready (warming up or shutting down)", type="server_error",
                           code="unavailable", headers={"Retry-After": "1"})
        return service

    static = {path: (files("lightning_llm.serving").joinpath("static", name).read_bytes(), media)
              for path, (name, media) in PLAYGROUND.items()}

    def playground_file(path: str):
        content, media = static[path]
        headers = {"Content-Security-Policy": PLAYGROUND_CSP, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "no-cache"}

        async def route() -> Response:  # no parameters: nothing in the request chooses the file
            return Response(content, media_type=media, headers=headers)
        return route

    for path in PLAYGROUND:
        app.add_api_route(path, playground_file(path), methods=["GET"], include_in_schema=False)

    @app.get("/health")
    async def health():
        service = hub.current
        if not service.ready:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "model": service.model_name, "registry": service.registry,
                "version": service.version}

    @app.get("/metrics")
    async def metrics():
        hub.current.sample_engine()
        return Response(hub.metrics.render(), media_type=hub.metrics.content_type)

    @app.get("/v1/models")
    async def models():
        service = hub.current
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": service.created,
                                            "owned_by": "lightning-llm", "max_model_len": service.context}]}

    @app.get("/v1/templates")
    async def templates():
        """The chat templates a request may name (`template`), which one it gets without, and the
        index a request with `rag` retrieves from (null: none)."""
        service = hub.current
        default = service.default_template.name
        return {"object": "list", "data": [{"name": name, "default": name == default}
                                           for name in service.template_names()],
                "rag_index": service.index.name if service.index is not None else None}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        service = hub.current
        return {**service.specials, "chat_template": service.chat_template, "model_max_length": service.context,
                "vocab_size": service.vocab, "tokenizer_class": "tokenizers.Tokenizer"}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        service = hub.current
        ids = service.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
        return {"tokens": ids, "count": len(ids), "max_model_len": service.context}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        service = hub.current
        if body.tokens:
            service.check_ids(body.tokens, "tokens")
        return {"prompt": service.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await answer("completion", body, request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await answer("chat", body, request)

    async def answer(kind: str, body, request: Request):
        # From here until the job is in the engine nothing awaits: a registry switch (on this loop)
        # comes before or after, never in between, so the job always reaches an engine that runs it.
        service = available()
        version = {"X-Model-Version": service.version} if service.version else {}
        key = service.key(kind, body)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if key is not None:
            cached = service.cache.get(key)
            if cached is not None:
                service.metrics.cache_hits.inc()
                prefix = "cmpl" if kind == "completion" else "chatcmpl"
                cached.update(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()))
                if body.stream:
                    chunks = [sse(c) for c in replay(cached, include_usage=include_usage)] + [sse("[DONE]")]
                    return EventStream(replayed(chunks), job=None, headers={"X-Cache": "hit", **version})
                return JSONResponse(cached, headers={"X-Cache": "hit", **version})
            service.metrics.cache_misses.inc()
        headers = {"X-Cache": "miss" if key else "bypass", **version}
        job = (service.completion_job if kind == "completion" else service.chat_job)(body, arrived(request))
        # The time limit cancels the job's sequences; each then ends, and the answer says why.
        timer = asyncio.get_running_loop().call_later(deadline(request), job.expire)
        if body.stream:
            return EventStream(stream(service, job, key, request, timer), job=job, headers=headers)
        watcher = asyncio.create_task(cancel_on_disconnect(request, job))
        try:
            await service.run(job)
        finally:
            timer.cancel()
            watcher.cancel()
            service.account(job)
        failure = service.failure(job)
        if failure is not None:
            raise failure
        out = service.body(job)
        if key is not None:
            service.cache.put(key, out)
        return JSONResponse(out, headers=headers)

    async def cancel_on_disconnect(request: Request, job: Job):
        """A client that hangs up on a non-streamed request leaves nothing to compute."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.client_gone = True
        job.cancel()

    async def stream(service: Service, job: Job, key: str | None, request: Request, timer: asyncio.TimerHandle):
        started: set[int] = set()
        try:
            if job.kind == "chat":  # the assistant's role first, as OpenAI does
                for seq in job.sequences:
                    yield sse(service.chunk(job, [{"index": seq.index, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]))
            async for seq, piece, start in service.stream(job):
                choice = service.delta_choice(job, seq, piece, start, first=seq.index not in started)
                started.add(seq.index)
                yield sse(service.chunk(job, [choice]))
            failure = service.failure(job)
            if failure is not None:  # the status line is long gone: the error travels as an event
                service.metrics.errors.labels(request.url.path, "stream").inc()
                yield sse(failure.body())
            else:
                if job.include_usage:
                    yield sse(service.chunk(job, [], service.usage(job)))
                if key is not None:
                    service.cache.put(key, service.body(job))
            yield sse("[DONE]")
        finally:
            timer.cancel()
            service.account(job)

    return app
