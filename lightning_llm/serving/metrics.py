"""Prometheus metrics of one server. Under `serve.workers=N` every worker writes its values to
files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set up by server.py)
and `/metrics`, whichever worker answers it, reports the sum over live workers.

Drift: every prompt the engine prefills is scored on the way (its mean NLL per token, no extra
forward). `llm_prompt_loss_nats_total` and `llm_prompt_loss_tokens_total` add up the prompts' NLL
and the tokens scored, by registry and version (empty where the model is from no registry), so
the mean loss over any window is a ratio of their increases (PromQL: rate(nats) / rate(tokens));
`llm_prompt_loss` is the histogram of each prompt's own mean. `llm registry status` reads them."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series double the output and no dashboard reads them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LOSS_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)
VERSION_LABELS = ("registry", "version")


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llm_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("llm_request_errors", "Requests answered with an error (status >= 400, or an error "
                              "event in a stream), by endpoint and status", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.generated_tokens = Counter("llm_generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "From the request's arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("llm_request_latency_seconds", "From a request's arrival to its last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("llm_queue_depth", "Sequences waiting for a batch slot", registry=r,
                                 multiprocess_mode="livesum")
        self.active = Gauge("llm_active_sequences", "Sequences being decoded", registry=r,
                            multiprocess_mode="livesum")
        self.batch_size = Histogram("llm_batch_size", "Sequences in each decoding step", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.cache_hits = Counter("llm_cache_hits", "Requests answered from the response cache", registry=r)
        self.cache_misses = Counter("llm_cache_misses", "Cacheable requests that had to be generated", registry=r)
        self.loss_nats = Counter("llm_prompt_loss_nats", "Summed NLL (nats) of the prompt tokens scored in prefill",
                                 VERSION_LABELS, registry=r)
        self.loss_tokens = Counter("llm_prompt_loss_tokens", "Prompt tokens scored in prefill (all but each "
                                   "prompt's first)", VERSION_LABELS, registry=r)
        self.prompt_loss = Histogram("llm_prompt_loss", "Each scored prompt's mean NLL per token (nats)",
                                     VERSION_LABELS, buckets=LOSS_BUCKETS, registry=r)
        self.live = Gauge("llm_live_version", "1 for the registry version new requests go to, 0 for one replaced",
                          VERSION_LABELS, registry=r, multiprocess_mode="livemax")

    def record_prompt(self, registry: str, version: str, *, loss: float, tokens: int) -> None:
        """One prompt scored in prefill: its mean NLL per token over `tokens` tokens."""
        self.loss_nats.labels(registry, version).inc(loss * tokens)
        self.loss_tokens.labels(registry, version).inc(tokens)
        self.prompt_loss.labels(registry, version).observe(loss)

    def render(self) -> bytes:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
