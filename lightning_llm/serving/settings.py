"""The server's settings: the checked form of conf/serve.yaml, and how they reach uvicorn's workers.

Workers of `serve.workers=N` are fresh processes started by uvicorn: they read the settings
back from one environment variable as JSON (never a pickle). API keys stay out of that JSON:
they travel in their own variable, so nothing that prints the settings can print a key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

SETTINGS_ENV = "LLM_SERVE_SETTINGS"  # JSON of ServeSettings (without keys), for uvicorn's workers
KEYS_ENV = "LLM_SERVE_KEYS_JSON"  # JSON list of the API keys, for uvicorn's workers


@dataclass
class ServeSettings:
    """What `llm serve` runs with; every field is a key of conf/serve.yaml (ckpt and device at its top)."""

    ckpt: str
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1                  # uvicorn worker processes on one port: one replica (model, batch, cache) each
    model_name: str | None = None     # the `model` clients name; null: the artifact's folder name
    api_keys: list[str] = field(default_factory=list, repr=False)  # Bearer keys; empty and no env var: no auth
    api_keys_env: str | None = "LLM_API_KEYS"  # an environment variable holding more keys, comma-separated
    max_batch_size: int = 8           # sequences decoded together in one step
    dtype: str = "auto"               # weights: auto (the faster, measured) | float32 | bfloat16 (native bf16 only)
    max_queue: int = 64               # sequences waiting for a batch slot; a full queue answers 429
    batching: bool = True             # false: one sequence at a time (for comparison)
    slide: bool = False               # true: generation goes on past the context window (the last half is kept)
    threads: int | None = None        # torch threads per replica; null: the cores left after one for HTTP,
                                      # shared between the replicas
    max_tokens: int = 256             # the largest max_tokens a request may ask for
    default_max_tokens: int = 16      # /v1/completions without max_tokens (OpenAI's default)
    max_n: int = 8                    # choices per request
    max_prompts: int = 32             # prompts in one /v1/completions request
    max_logprobs: int = 20            # alternatives per token (logprobs, top_logprobs)
    max_stop: int = 4                 # stop strings per request
    max_body_bytes: int = 1_000_000   # larger request bodies get 413
    stream_interval: float = 0.02     # seconds: a sequence's tokens reach HTTP at most this often (those
                                      # that come meanwhile travel together, one SSE chunk); 0: each token
    request_timeout: float = 120.0    # seconds a request may take, queueing included
    drain_timeout: float = 30.0       # on SIGTERM/SIGINT: seconds in-flight requests get to finish
    cache_size: int = 1024            # deterministic responses kept (LRU); 0 turns the cache off
    chat_template: str | None = None  # a Jinja chat template (served as "custom"); null: the template below
    template: str | None = None       # `template=<name>` (conf/template/): the default for requests; null: the model's
    rag_dir: str | None = None        # `rag.index=<name>`: the index requests with `rag` retrieve from (its folder,
                                      # <output_root>/index/<name>, set by the stage); null: none
    rag_top_k: int = 3                # passages a request with `rag: {}` gets
    rag_max_top_k: int = 10           # the most passages a request may ask for
    registry: str | None = None       # `registry=<name>`: serve its live version and follow it (ckpt is that version)
    registry_root: str | None = None  # the output root the registry is under (set by the stage)
    registry_poll: float = 2.0        # seconds between looks at the registry's registry.json
    warmup: bool = True               # run a short generation before answering
    access_log: bool = False          # uvicorn's line per request (costs CPU under load)

    def __post_init__(self):
        positive = ("workers", "max_batch_size", "max_queue", "max_tokens", "default_max_tokens", "max_n",
                    "max_prompts", "max_body_bytes", "max_stop")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16 or auto, got {self.dtype!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or null), got {self.threads}")
        if not 1 <= self.rag_top_k <= self.rag_max_top_k:
            raise ValueError(f"rag.top_k must be at least 1 and at most rag.max_top_k ({self.rag_max_top_k}), "
                             f"got {self.rag_top_k}")
        if self.cache_size < 0 or self.max_logprobs < 0:
            raise ValueError("cache_size and max_logprobs must be at least 0")
        if self.request_timeout <= 0 or self.drain_timeout < 0 or not 0 <= self.stream_interval <= 1:
            raise ValueError("request_timeout must be positive, drain_timeout at least 0 and stream_interval "
                             "in 0..1 seconds")
        if self.registry is not None and self.registry_root is None:
            raise ValueError(f"registry={self.registry!r} needs registry_root, the output root it is under")
        if not self.registry_poll > 0:
            raise ValueError(f"registry_poll must be a positive number of seconds, got {self.registry_poll}")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")

    def all_api_keys(self) -> list[str]:
        """The configured keys and those of the `api_keys_env` variable."""
        extra = os.environ.get(self.api_keys_env, "") if self.api_keys_env else ""
        return list(self.api_keys) + [k.strip() for k in extra.split(",") if k.strip()]

    def to_env(self) -> dict[str, str]:
        """The environment a worker process reads its settings from."""
        public = {k: v for k, v in dataclasses.asdict(self).items() if k != "api_keys"}
        return {SETTINGS_ENV: json.dumps(public), KEYS_ENV: json.dumps(self.all_api_keys())}

    @classmethod
    def from_env(cls) -> ServeSettings:
        values = json.loads(os.environ[SETTINGS_ENV])
        values.update(api_keys=json.loads(os.environ.get(KEYS_ENV, "[]")), api_keys_env=None)
        return cls(**values)
