"""An LRU cache of deterministic responses (temperature 0, or a fixed seed), one per replica."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict

from lightning_llm.serving.protocol import SamplingFields

# Fields that change how an answer is delivered, not what it is.
DELIVERY = {"stream", "stream_options", "user"}


def deterministic(request: SamplingFields) -> bool:
    return request.temperature == 0 or request.seed is not None


def cache_key(endpoint: str, request: SamplingFields, model: str) -> str:
    """The same question asked twice, streamed or not, has one key."""
    fields = request.model_dump(exclude=DELIVERY, exclude_none=True)
    fields["model"] = model
    return hashlib.sha256(json.dumps([endpoint, fields], sort_keys=True).encode()).hexdigest()


class ResponseCache:
    """Response bodies by key, least recently used first out; size 0 keeps nothing."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict[str, dict] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self.lock:
            body = self.entries.get(key)
            if body is None:
                return None
            self.entries.move_to_end(key)
        return copy.deepcopy(body)

    def put(self, key: str, body: dict) -> None:
        if self.size == 0:
            return
        with self.lock:
            self.entries[key] = copy.deepcopy(body)
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)
