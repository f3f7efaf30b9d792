"""Running the app under uvicorn: one process, or `serve.workers=N` processes on one port.

The listening socket is bound here first, so a port in use is one clear error (and port 0
picks a free port, printed with the URL). SIGTERM or SIGINT: uvicorn stops accepting,
in-flight requests (streams included) get `serve.drain_timeout` seconds to finish, then the
engine stops and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile

import uvicorn

from lightning_llm.errors import UserError
from lightning_llm.model.io import Artifact, load_artifact
from lightning_llm.serving.settings import ServeSettings

FACTORY = "lightning_llm.serving.server:app_from_env"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"serve.host={host} serve.port={port}: cannot listen there ({err.strerror})") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, settings: ServeSettings, **extra) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=settings.drain_timeout,
                          access_log=settings.access_log, log_level="info", lifespan="on", **extra)


def serve(settings: ServeSettings, loaded: list[Artifact] | None = None, *, index=None) -> None:
    """Serve until SIGTERM/SIGINT; return once every request in flight is answered (or the drain
    timeout ran out). `loaded`: a list holding the artifact the stage loaded already (one process);
    serve takes it out, so that once `registry=` replaced that version nothing keeps its model.
    `index`: the RAG index the stage loaded already (one process), or None."""
    sock = bind(settings.host, settings.port)
    settings.port = sock.getsockname()[1]
    # uvicorn re-raises the signal it stopped on once it is done; a handler that ignores it lets
    # the stage return normally (exit 0) instead of dying of that signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    if settings.workers == 1:
        from lightning_llm.serving.app import create_app
        from lightning_llm.serving.follow import hub_of
        from lightning_llm.serving.service import Service

        set_threads(settings)
        artifact = loaded.pop() if loaded else load_artifact(settings.ckpt, device=settings.device)
        app = create_app(hub_of(Service(artifact, settings, index=index)))
        del artifact  # from here the app alone holds the model (this frame lives until the server stops)
        server = uvicorn.Server(uvicorn_config(app, settings))
        del app
        server.run(sockets=[sock])
        if not server.started:
            raise UserError("the server failed to start (the log above says why)")
        return
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    artifact = loaded.pop() if loaded else None  # each worker loads its own
    if settings.dtype == "auto":  # measured once, here, so that every worker runs the same dtype
        settings.dtype = resolved_dtype(settings, artifact)
    del artifact
    metrics_dir = tempfile.mkdtemp(prefix="llm-serve-metrics-")
    os.environ.update(settings.to_env(), PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    try:
        config = uvicorn_config(FACTORY, settings, factory=True, workers=settings.workers)
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise UserError("a worker failed to start (the log above says why)")


def resolved_dtype(settings: ServeSettings, artifact: Artifact | None) -> str:
    """serve.dtype=auto as a worker would resolve it (its thread count, serve.max_batch_size):
    "float32" or "bfloat16". Workers measuring each on their own, at once on shared cores, could
    each choose differently, and a seeded request's answer would depend on which one replied."""
    from lightning_llm.model.generation import inference_dtype

    set_threads(settings)
    model = (artifact or load_artifact(settings.ckpt, device=settings.device)).model
    dtype, why = inference_dtype(model, "auto", batch=settings.max_batch_size)
    print(f"note: every worker: {why}", flush=True)
    return str(dtype).removeprefix("torch.")


def set_threads(settings: ServeSettings) -> None:
    """serve.threads, or by default the replica's share of the cores less one: the HTTP side
    (event loop, JSON, sockets) needs a core of its own, or it and the engine's threads take
    turns on the same ones (docs/benchmarks.md measures the difference)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(settings.threads or max(1, cores // settings.workers - 1))


def app_from_env():
    """The app of one uvicorn worker, from the settings the parent put in the environment."""
    from lightning_llm.serving.app import create_app
    from lightning_llm.serving.follow import hub_of
    from lightning_llm.serving.service import Service

    if not logging.getLogger().handlers:  # a spawned worker: log as the stage's own process does (conf/hydra)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    settings = ServeSettings.from_env()
    set_threads(settings)
    return create_app(hub_of(Service(load_artifact(settings.ckpt, device=settings.device), settings)))
