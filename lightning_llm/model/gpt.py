"""A decoder-only transformer in plain PyTorch, readable top to bottom.

One file holds the whole model: the GPT-2 shape by default, and the choices that
later architectures made (RoPE, RMSNorm, SwiGLU, grouped-query attention) as
config options, so a researcher can compare them one switch at a time.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None  # None: plain multi-head; fewer: grouped-query attention
    n_embd: int = 384
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    position: str = "learned"  # learned | rope | none
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | swiglu
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    # Set by structured pruning (llm compress), None otherwise: an MLP width other than mlp_ratio's, and a
    # head size other than n_embd / n_head (fewer heads, each as wide as before).
    mlp_hidden_size: int | None = None
    head_size: int | None = None

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        checks = [
            (self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}"),
            (self.block_size > 0, f"block_size must be positive, got {self.block_size}"),
            (self.n_layer > 0 and self.n_head > 0, "n_layer and n_head must be positive"),
            (self.n_embd > 0, f"n_embd must be positive, got {self.n_embd}"),
            (self.mlp_ratio > 0 and int(self.mlp_ratio * self.n_embd) > 0,
             f"mlp_ratio must give an MLP at least one unit wide, got {self.mlp_ratio}"),
            (self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}"),
            (self.n_embd % self.n_head == 0 or self.head_size is not None,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"),
            (self.mlp_hidden_size is None or self.mlp_hidden_size > 0,
             f"mlp_hidden_size must be positive, got {self.mlp_hidden_size}"),
            (self.head_size is None or self.head_size > 0, f"head_size must be positive, got {self.head_size}"),
            (self.n_kv_head > 0 and self.n_head % self.n_kv_head == 0,
             f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"),
            (self.position in ("learned", "rope", "none"),
             f"position must be learned, rope or none, got {self.position!r}"),
            (self.norm in ("layernorm", "rmsnorm"), f"norm must be layernorm or rmsnorm, got {self.norm!r}"),
            (self.mlp in ("gelu", "swiglu"), f"mlp must be gelu or swiglu, got {self.mlp!r}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_hidden_size is not None:
            return self.mlp_hidden_size
        # SwiGLU has three matrices instead of two: shrink it to keep the parameter count.
        hidden = int(self.mlp_ratio * self.n_embd)
        return hidden if self.mlp == "gelu" else 64 * math.ceil(2 * hidden / 3 / 64)

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-6)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
    angles = torch.outer(torch.arange(config.block_size).float(), inv_freq)  # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class KVCache:
    """Preallocated keys and values per layer for `batch_size` rows, each row with its own length.

    Row i holds the keys and values of positions [0, lengths[i]). A forward through the model
    appends T tokens to every row of the cache it is given, each row at its own positions, and
    attends over the row's own past only (a mask built from the lengths). `rows(a, b)`
    is a view of rows [a, b) sharing the storage, so a batch of requests can be prefilled into
    free rows, decoded over the active ones, and `move` compacts rows when one leaves.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        self.dtype = dtype
        shape = (batch_size, config.n_kv_head, config.block_size, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long)  # on the CPU: read without a device sync
        self.block_size = config.block_size
        self.where = self.mask = None  # set by begin() for one forward: where to write, what to attend to
        self.causal, self.end = False, 0

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows [start, stop) as a cache of their own, sharing this one's storage."""
        view = copy.copy(self)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.lengths = self.lengths[start:stop]
        return view

    def move(self, src: int, dst: int) -> None:
        """Copy row src into row dst (to fill the hole a finished row leaves)."""
        n = int(self.lengths[src])
        for k, v in zip(self.keys, self.values):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def begin(self, T: int) -> slice | torch.Tensor:
        """Prepare a forward that appends T tokens to every row; returns their positions: a slice
        when all rows start at the same length, else a (B, T) tensor. Sets the attention mask."""
        starts = self.lengths
        lengths = starts.tolist()
        start, self.end = lengths[0], max(lengths) + T
        if self.end > self.block_size:
            raise ValueError(f"sequence of {self.end} tokens exceeds block_size {self.block_size}")
        if min(lengths) == max(lengths) and (start == 0 or T == 1):
            # a fresh batch is plain causal; one new token per row attends to the whole past
            self.where = slice(start, start + T)
            self.mask, self.causal = None, start == 0
            return self.where
        device = self.keys[0].device
        positions = starts.to(device)[:, None] + torch.arange(T, device=device)  # (B, T)
        self.where = (torch.arange(len(starts), device=device)[:, None], positions)
        visible = torch.arange(self.end, device=device) <= positions[..., None]  # (B, T, end): its own past only
        # additive, in the cache's dtype, made once here rather than by attention in every layer
        self.mask = torch.zeros(visible.shape, dtype=self.dtype, device=device).masked_fill_(
            ~visible, float("-inf")).unsqueeze(1)  # (B, 1, T, end)
        self.causal = False
        return positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, n_kv_head, T, head_dim) keys and values; return all keys and values to attend over."""
        if isinstance(self.where, slice):
            self.keys[layer][:, :, self.where] = k
            self.values[layer][:, :, self.where] = v
        else:  # row b's token t goes to position positions[b, t]
            self.keys[layer][self.where[0], :, self.where[1]] = k.transpose(1, 2)
            self.values[layer][self.where[0], :, self.where[1]] = v.transpose(1, 2)
        return self.keys[layer][:, :, :self.end], self.values[layer][:, :, :self.end]

    def advance(self, T: int) -> None:
        self.lengths += T


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_dim = 2 * config.n_kv_head * config.head_dim
        self.q_dim = config.n_head * config.head_dim  # n_embd, unless heads were pruned
        self.qkv = nn.Linear(config.n_embd, self.q_dim + kv_dim, bias=config.bias)
        self.proj = nn.Linear(self.q_dim, config.n_embd, bias=config.bias)
        self.proj.residual_out = True
        self.dropout = config.dropout
        self.use_rope = config.position == "rope"

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        qkv = self.qkv(x)
        if cache is not None and cache.dtype != qkv.dtype:  # attention runs in the cache's dtype (fp32 for bf16 on a CPU)
            qkv = qkv.to(cache.dtype)
        q, k, v = qkv.split([self.q_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask, causal = None, True  # training: the sequence attends causally to itself
        if cache is not None:  # the cache appends the new keys and says what each query may see
            k, v = cache.update(layer, k, v)
            mask, causal = cache.mask, cache.causal
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).reshape(B, T, self.q_dim).to(x.dtype)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        width = config.mlp_hidden * (2 if self.gated else 1)  # gate and value in one matmul
        self.up = nn.Linear(config.n_embd, width, bias=config.bias)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.down.residual_out = True
        self.act = nn.SiLU() if self.gated else nn.GELU(approximate="tanh")
        self.dropout = config.dropout

    def forward(self, x):
        h = self.up(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = self.act(gate) * value
        else:
            h = self.act(h)  # inference may fold it into `up` (model/layout.py): then an identity
        return F.dropout(self.down(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.norm2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.norm1(x), rope, cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        # GPT-2 init; residual output projections scaled by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_out", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                every_position: bool = False):
        """Logits for every position (training, or every_position) or the last one (inference);
        loss when targets are given."""
        x = self.features(idx, cache)
        if targets is None:
            return self.lm_head(x if every_position else x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def features(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, T, n_embd): what the LM head, or a task head, reads."""
        B, T = idx.shape
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            positions = slice(0, T)
        else:  # each row continues at its own length: a slice when they are all equal, else (B, T)
            positions = cache.begin(T)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[positions]
        rope = None
        if self.config.position == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])
            if rope[0].dim() == 3:  # per-row positions: (B, T, hd/2) -> (B, 1, T, hd/2), broadcast over heads
                rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.norm_f(x)

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | list | None = None, use_cache: bool = True,
                 top_p: float = 1.0) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens per row: a convenience over
        generation.stream, which it runs with a sliding window: a prompt longer than block_size
        keeps its last block_size tokens, and a row that fills the window continues from its
        last block_size // 2 tokens (use_cache=False instead recomputes the last block_size
        tokens for every new token: slower, and it conditions on more context).
        The model's mode is the caller's: in training mode dropout is on."""
        from lightning_llm.model.generation import stream
        from lightning_llm.model.sampling import sample

        if not use_cache:
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size:])
                next_id = sample(logits[:, -1, :], temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=generator)
                idx = torch.cat((idx, next_id[:, None]), dim=1)
            return idx
        if max_new_tokens < 1:
            return idx
        prompts = idx[:, -self.config.block_size:].tolist()
        new = [[] for _ in prompts]
        for step in stream(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, generators=generator, slide=True):
            for token in step:
                new[token.row].append(token.id)
        return torch.cat((idx, torch.tensor(new, dtype=idx.dtype, device=idx.device)), dim=1)


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6N for the matmuls forward and backward, plus attention
    scores and values (12 * layers * width * context), as counted by PaLM and nanoGPT."""
    c = model.config
    n = model.num_params(exclude_embeddings=True)
    if not c.tie_embeddings:
        n -= model.tok_emb.weight.numel()  # a lookup, not a matmul; a tied table is the head's matmul
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
