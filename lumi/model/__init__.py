"""The transformer: the reference operations (``ops``), a layer's weights (``layers``), the KV cache
(``kvcache``) and ``Model`` (``transformer``), which runs them on the devices ``lumi.backends`` gives it."""

from .transformer import Model

__all__ = ["Model"]
