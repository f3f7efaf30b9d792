"""`llm serve registry=<name>`: the server follows a registry's live version.

A Hub holds the Service new requests go to (`current`) and the replaced ones still finishing
theirs. Without a registry it holds one Service for good. With one, a task on the event loop reads
registry.json every serve.registry_poll seconds (only when the file changed); when another
version is live (a promotion or a rollback), a worker thread loads and warms it while the loop
keeps answering, then, on the loop, new requests go to it and the replaced service drains: its
engine finishes what it holds (for up to serve.request_timeout), stops, and lets its model go.

No request is dropped by the switch: a request picks its service and submits to that service's
engine with no `await` in between, and the switch happens on the same loop, so every request either
reached the old engine before the switch (and finishes there) or goes to the new one.

A version that fails to load or warm up is one log line; the current one keeps serving, and that
version is tried again only once the registry's live version has changed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from lightning_llm.serving.service import Service

log = logging.getLogger(__name__)


def hub_of(service: Service) -> Service | Hub:
    """The service alone, or with serve.registry a Hub that follows that registry."""
    settings = service.settings
    if settings.registry is None:
        return service
    from lightning_llm.model.io import load_artifact
    from lightning_llm.registry import Registry

    metrics, index = service.metrics, service.index  # the process's, shared; nothing else of the first service

    def build(path: Path) -> Service:
        return Service(load_artifact(path, device=settings.device), settings, metrics=metrics, index=index)

    return Hub(service, registry=Registry(settings.registry_root, settings.registry), poll=settings.registry_poll,
               build=build)


class Hub:
    """The service that takes new requests, the ones draining, and (registry=) how to follow."""

    def __init__(self, service: Service, *, registry=None, poll: float = 2.0,
                 build: Callable[[Path], Service] | None = None):
        self.current = service
        self.draining: list[Service] = []
        self.registry, self.poll, self.build = registry, poll, build
        self.metrics, self.settings = service.metrics, service.settings
        self.closing = False
        self.switches = 0
        self.retiring: set[asyncio.Task] = set()
        self.adopt(service)

    def adopt(self, service: Service) -> None:
        service.engines = self.engines
        if service.version is not None:
            self.metrics.live.labels(service.registry or "", service.version).set(1)

    def engines(self) -> list:
        return [s.engine for s in (self.current, *self.draining)]

    # --- life cycle (the app's lifespan) ---------------------------------------------------------------

    async def start(self) -> asyncio.Task | None:
        await asyncio.to_thread(self.current.start)
        if self.registry is None:
            return None
        task = asyncio.create_task(self.follow())
        task.add_done_callback(self.followed)
        return task

    def followed(self, task: asyncio.Task) -> None:
        """The follow task ended: on shutdown (cancelled), or, were it a bug, say so."""
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            log.error("registry %s: stopped following it (%s: %s); %s keeps serving", self.registry.name,
                      type(err).__name__, err, self.current.version, exc_info=err)

    def stop(self) -> None:
        """On shutdown (the HTTP side has drained): stop every engine."""
        self.closing = True
        for service in list(self.draining):
            service.stop(0)
        self.current.stop()

    # --- following a registry ------------------------------------------------------------------------

    async def follow(self) -> None:
        """Switch to the registry's live version whenever it changes, until cancelled."""
        seen, failed, unreadable = None, None, False
        state = self.registry.dir / "registry.json"
        while True:
            await asyncio.sleep(self.poll)
            try:
                # registry.json is replaced whole (a new file renamed over it): a new inode on every write
                info = state.stat()
                stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
                if stamp == seen:
                    continue
                live = await asyncio.to_thread(lambda: self.registry.live)
                seen, unreadable = stamp, False
            except (OSError, ValueError, KeyError, TypeError) as err:  # gone, not JSON, not a registry's
                if not unreadable:
                    log.error("registry %s: cannot read %s (%s); %s keeps serving", self.registry.name, state,
                              err, self.current.version)
                unreadable = True
                continue
            if live is None or live == self.current.version:
                failed = None
                continue
            if live == failed:
                continue
            try:
                service = await self.loaded(live)
            except Exception as err:  # noqa: BLE001 - whatever broke the new version, the old one serves on
                log.error("registry %s: cannot switch to %s (%s: %s); %s keeps serving", self.registry.name, live,
                          type(err).__name__, str(err).splitlines()[0] if str(err) else "", self.current.version)
                failed = live
                continue
            failed = None
            if service is None:
                if self.closing:
                    return
                log.info("registry %s: %s is no longer live once loaded; %s keeps serving", self.registry.name,
                         live, self.current.version)
                seen = None  # read the registry again at the next look
                continue
            try:
                self.switch(service)
            except Exception as err:  # noqa: BLE001 - the switch failed before it was made: keep the old one
                log.exception("registry %s: cannot switch to %s (%s: %s); %s keeps serving", self.registry.name,
                              live, type(err).__name__, err, self.current.version)
                if self.current is not service:
                    await asyncio.to_thread(service.stop, 0)
                failed = live

    async def loaded(self, version: str) -> Service | None:
        """load(version) in a worker thread. Cancelled meanwhile (shutdown), the load still runs to its
        end, and the service it made stops before the cancellation goes on."""
        future = asyncio.ensure_future(asyncio.to_thread(self.load, version))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            try:
                service = await future
            except Exception:  # noqa: BLE001 - it failed to load: nothing to stop
                service = None
            if service is not None:
                await asyncio.to_thread(service.stop, 0)
            raise

    def load(self, version: str) -> Service | None:
        """The version's service, warmed up (in a worker thread); None (and nothing left running) if
        the server began stopping or that version is no longer live by then: loading takes a while."""
        service = self.build(self.registry.path(version))
        service.start()  # if it fails, it stopped its engine first
        if self.closing or not self.is_live(version):
            service.stop(0)
            return None
        return service

    def is_live(self, version: str) -> bool:
        try:
            return self.registry.live == version
        except (OSError, ValueError, KeyError, TypeError):  # unreadable now: look again later
            return False

    def switch(self, service: Service) -> None:
        """On the loop: new requests go to `service`; the old one drains in a thread, then goes."""
        old = self.current
        self.adopt(service)
        self.current = service
        old.warm = False
        old.engine.close()  # nothing new reaches it (nothing could: no await since a request picked it)
        self.draining.append(old)
        self.switches += 1
        if old.version is not None:
            self.metrics.live.labels(old.registry or "", old.version).set(0)
        running = old.engine.active + old.engine.queue_depth
        log.info("registry %s: serving %s (was %s; it finishes its %d running requests)", self.registry.name,
                 service.version, old.version, running)
        task = asyncio.create_task(self.retire(old))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def retire(self, old: Service) -> None:
        try:
            await asyncio.to_thread(old.retire)
        finally:
            self.draining.remove(old)
        log.info("registry %s: %s drained and released", self.registry.name, old.version)
