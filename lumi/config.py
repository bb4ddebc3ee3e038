"""The model description: one frozen dataclass covers the Llama family as data.

Llama 2, Llama 3, TinyLlama and Qwen2 differ only in the numbers and switches
below (RoPE layout and base, grouped-query heads, q/k/v biases, a tied or
separate classifier), never in a fork of the forward pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ROPE_LAYOUTS = ("interleaved", "half")
# Canonical weights whose rows the model stacks into one product (q, k, v; gate, up), in that order. A reader
# that already holds them adjacent in one buffer saves the copy.
STACKED_ROWS = (("attention.wq", "attention.wk", "attention.wv"), ("feed_forward.w1", "feed_forward.w3"))


@dataclass(frozen=True)
class ModelConfig:
    dim: int  # width of the residual stream
    hidden_dim: int  # SwiGLU inner width
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (grouped-query attention when < n_heads)
    vocab_size: int
    max_seq_len: int  # longest context the model was built for
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base
    # "interleaved": rotate pairs (x[2i], x[2i+1]) as Meta's and llama2.c's code do;
    # "half": rotate (x[i], x[i + d/2]) as Hugging Face's rotate_half does.
    rope_layout: str = "half"
    # Llama 3.1's RoPE frequency scaling: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings), or None for plain RoPE.
    rope_scaling: tuple[float, float, float, int] | None = None
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    tie_embeddings: bool = False  # the classifier is the token-embedding table
    bos_id: int = 1
    stop_ids: tuple[int, ...] = (2,)  # sampling one of these ends generation

    def __post_init__(self):
        for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout must be one of {ROPE_LAYOUTS}, got {self.rope_layout!r}")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError("norm_eps and rope_theta must be positive")
        if self.rope_scaling is not None:
            factor, low, high, original = self.rope_scaling
            if not (factor >= 1 and 0 < low < high and original > 0):
                raise ValueError(f"rope_scaling needs factor >= 1, 0 < low_freq_factor < high_freq_factor and "
                                 f"original_max_position_embeddings > 0, got {self.rope_scaling}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight by canonical name, in (out, in) row order: what readers must return."""
        d, h, kv = self.dim, self.hidden_dim, self.kv_dim
        shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (self.vocab_size, d)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes[p + "attention_norm"] = (d,)
            shapes[p + "attention.wq"] = (d, d)
            shapes[p + "attention.wk"] = (kv, d)
            shapes[p + "attention.wv"] = (kv, d)
            if self.attention_bias:
                shapes[p + "attention.bq"] = (d,)
                shapes[p + "attention.bk"] = (kv,)
                shapes[p + "attention.bv"] = (kv,)
            shapes[p + "attention.wo"] = (d, d)
            shapes[p + "ffn_norm"] = (d,)
            shapes[p + "feed_forward.w1"] = (h, d)  # gate
            shapes[p + "feed_forward.w2"] = (d, h)  # down
            shapes[p + "feed_forward.w3"] = (h, d)  # up
        shapes["norm"] = (d,)
        if not self.tie_embeddings:
            shapes["output"] = (self.vocab_size, d)
        return shapes

    def n_params(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


_STORIES = dict(rope_layout="interleaved", tie_embeddings=True, stop_ids=(1, 2))

# Named shapes. The stories models are Karpathy's TinyStories checkpoints
# (llama2.c, interleaved RoPE, shared classifier); the rest follow their
# Hugging Face configs.
PRESETS: dict[str, ModelConfig] = {
    "stories260K": ModelConfig(64, 172, 5, 8, 4, 512, 512, **_STORIES),
    "stories15M": ModelConfig(288, 768, 6, 6, 6, 32000, 256, **_STORIES),
    "stories42M": ModelConfig(512, 1376, 8, 8, 8, 32000, 1024, **_STORIES),
    "stories110M": ModelConfig(768, 2048, 12, 12, 12, 32000, 1024, **_STORIES),
    "tinyllama-1.1B": ModelConfig(2048, 5632, 22, 32, 4, 32000, 2048),
    "llama2-7B": ModelConfig(4096, 11008, 32, 32, 32, 32000, 4096),
    "llama3-8B": ModelConfig(
        4096, 14336, 32, 32, 8, 128256, 8192, rope_theta=500000.0, bos_id=128000, stop_ids=(128001, 128009)
    ),
}
