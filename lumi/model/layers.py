"""A transformer layer's weights, checked against the config and placed on their devices in storage form.

Each weight is held once, in the layout its product wants, in the run's
storage dtype (``lumi.storage``), with q/k/v and gate/up stacked into one
product each (``config.STACKED_ROWS``): (out, in) rows, C-contiguous, except a
float32 matrix on the host under the NumPy kernels, which is column-major
(``order="F"``: the same (out, in) shape, F-contiguous). Its product ``x @ w.T``
is then BLAS's non-transposed GEMV/GEMM over a C-contiguous (in, out) matrix,
which OpenBLAS streams markedly faster than it reads (out, in) rows one token at
a time, and no slower for a prompt (docs/performance.md). The fused kernels
read rows, so under them every matrix is C-contiguous. A weight bound for a GPU
is uploaded in its stored width (``backends.cuda.storage``); one drawn on a GPU
(``formats.synthetic.DeviceWeights``) is converted there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends import CPU, Device
from ..backends.cpu import column_major
from ..backends.cuda.storage import DeviceMatrix, convert_on_device, stack_on_device
from ..config import STACKED_ROWS, ModelConfig
from ..errors import LumiError
from ..storage import release, resident, stack_rows, to_float32, to_storage


@dataclass
class Layer:
    """One transformer block's weights, each in the layout its product wants."""

    attention_norm: object  # (d,)
    wqkv: object  # (d + 2 kv_dim, d): wq, wk, wv stacked, one product per token
    bqkv: object | None  # (d + 2 kv_dim,) or None
    wo: object  # (d, d)
    ffn_norm: object  # (d,)
    w13: object  # (2h, d): gate w1 and up w3 stacked
    w2: object  # (d, h)
    device: Device = CPU  # where this layer's weights and KV cache live


def vector(device: Device, source: Device, *arrays):
    """Norm weights and biases: one float32 vector on the device (several concatenated)."""
    if not source.host_memory:  # weights made on a device (``synthetic.DeviceWeights``)
        v = source.xp.concatenate(arrays)
        return v if device is source else device.to_device(source.to_host(v))
    return device.to_device(np.ascontiguousarray(np.concatenate([to_float32(a) for a in arrays])))


def matrix(device: Device, source: Device, dtype: str, *arrays, order: str = "C"):
    """A matrix in its storage dtype, the rows of several stacked, on the device (on the host: in the process's memory).

    ``source``: where ``arrays`` are; weights made on a GPU are converted there,
    and only their stored bytes come to the host for layers placed there.
    ``order="F"``: a float32 matrix on the host is held column-major (see the module doc).
    """
    if not source.host_memory:
        w = stack_on_device([convert_on_device(a, dtype, source.xp) for a in arrays], source.xp)
        if device is source:
            return w
        if dtype == "fp32":
            host = source.to_host(w)
            return column_major([host]) if order == "F" and device.host_memory else device.to_device(host)
        host = w.to_host(source)  # a HalfMatrix or BlockQ8 of the stored bytes
        return host if device.host_memory else DeviceMatrix.upload(host, device)
    if order == "F" and dtype == "fp32" and device.host_memory:  # one copy out of the file map, stacked there
        w = column_major([to_float32(a) for a in arrays])
    else:
        w = resident(to_storage(stack_rows(list(arrays)), dtype))
    for a in arrays:  # copied out: the file's pages need not stay in this process's resident set
        release(a)
    if isinstance(w, np.ndarray):
        return device.to_device(w)
    return w if device.host_memory else DeviceMatrix.upload(w, device)


def check_weights(config: ModelConfig, weights) -> None:
    """Every canonical weight of ``config`` present with its shape, or a LumiError naming the first that is not.

    A mapping that draws its tensors when asked (``synthetic.DeviceWeights``) gives their shapes undrawn.
    """
    expected = config.tensor_shapes()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise LumiError(f"weights missing: {', '.join(missing[:5])}")
    shapes = getattr(weights, "shapes", None) or {name: tuple(weights[name].shape) for name in expected}
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise LumiError(f"weight {name} has shape {tuple(shapes[name])}, config needs {shape}")


def place_layers(config: ModelConfig, weights, dtype: str, placement: list[Device], order: str = "C") -> list[Layer]:
    """Each layer's weights in storage ``dtype`` on its device (``placement[i]``), its file pages released;
    ``order`` as ``matrix``'s, for the host's float32 matrices."""
    w, source = weights, getattr(weights, "device", CPU)
    layers = []
    for i, dev in enumerate(placement):
        p = f"layers.{i}."
        bias = None
        if config.attention_bias:
            bias = vector(dev, source, w[p + "attention.bq"], w[p + "attention.bk"], w[p + "attention.bv"])
        layers.append(
            Layer(
                attention_norm=vector(dev, source, w[p + "attention_norm"]),
                wqkv=matrix(dev, source, dtype, *(w[p + n] for n in STACKED_ROWS[0]), order=order),
                bqkv=bias,
                wo=matrix(dev, source, dtype, w[p + "attention.wo"], order=order),
                ffn_norm=vector(dev, source, w[p + "ffn_norm"]),
                w13=matrix(dev, source, dtype, *(w[p + n] for n in STACKED_ROWS[1]), order=order),
                w2=matrix(dev, source, dtype, w[p + "feed_forward.w2"], order=order),
                device=dev,
            )
        )
    return layers
