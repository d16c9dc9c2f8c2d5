"""A pure-Python reader of dlib's serialisation format, for its DNN model files (``.dat``).

No C++ build and no dlib: the bytes are read as ``dlib/serialize.h`` and each layer's
``serialize`` in ``dlib/dnn/layers.h`` write them:

- an integer is one byte ``s`` then ``s & 0x0F`` little-endian bytes; ``s & 0x80`` marks a
  negative value (bits 0x70 are never set);
- a float is two integers, mantissa and exponent: ``mantissa * 2**exponent``;
- a string is its length (an integer) then its bytes; a bool is the character ``0``/``1``;
- a tensor is version 2, ``num_samples, k, nr, nc``, then that many little-endian float32;
  an ``alias_tensor`` (a view's shape) is version 1 and the same four integers.

A network ``loss<L_n<...<L_1<input>>>>`` is written outside in: the loss layer first, then
every wrapper's version (``add_layer`` 2, the bottom one 3, ``add_tag_layer`` and
``add_skip_layer`` 1, which carry nothing else), then the input layer, then each
computational layer from the input up: its details (name + fields), three bools and three
tensors that hold no weights (gradient and output buffers). :func:`read_network` returns that
list; the model (``agegender.models.dlib_resnet``) checks it layer by layer against its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DlibFormatError", "DlibLayer", "DlibNetwork", "read_network"]


class DlibFormatError(ValueError):
    """The bytes are not the dlib network they claim to be (names the file and offset)."""


@dataclass
class DlibLayer:
    """One computational layer: its dlib name (``con_4``, ``affine_``, ...), its integer
    settings, its weights (float32) and the byte offset where it starts."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None
    offset: int = 0


@dataclass
class DlibNetwork:
    """What :func:`read_network` found: the loss and input layers' names and settings, the
    wrapper versions (outside in) and the computational layers (input up)."""

    loss: str
    loss_settings: dict[str, float]
    input: str
    input_settings: dict[str, Any]
    wrappers: list[int]
    layers: list[DlibLayer]
    size: int


class _Stream:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos:,}")

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated (needs {n} more bytes, file has {len(self.data):,})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        head = self._take(1)[0]
        if head & 0x70 or (head & 0x0F) > 8:
            self.pos -= 1
            raise self.fail(f"not a dlib integer (byte 0x{head:02x})")
        value = int.from_bytes(self._take(head & 0x0F), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in special:
            return special[exponent]
        return float(mantissa) * 2.0**exponent

    def string(self, limit: int = 256) -> str:
        n = self.integer()
        if not 0 <= n <= limit:
            raise self.fail(f"not a dlib string (length {n})")
        raw = self._take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("not a dlib string (non-ASCII bytes)") from None

    def boolean(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"not a dlib bool ({c!r})")
        return c == b"1"

    def version(self, expected: int, what: str) -> None:
        v = self.integer()
        if v != expected:
            raise self.fail(f"{what} version {v}, expected {expected}")

    def tensor(self) -> np.ndarray:
        self.version(2, "tensor")
        shape = tuple(self.integer() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"tensor of shape {shape}")
        n = int(np.prod(shape, dtype=np.int64))
        raw = self._take(4 * n)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        self.version(1, "alias_tensor")
        return tuple(self.integer() for _ in range(4))


def _details(s: _Stream) -> DlibLayer:
    start = s.pos
    name = s.string()
    layer = DlibLayer(name, offset=start)
    st = layer.settings
    if name == "con_4":
        layer.params = s.tensor()
        keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        st.update({k: s.integer() for k in keys})
        st["filters"], st["biases"] = s.alias(), s.alias()
        st["multipliers"] = tuple(s.real() for _ in range(4))
    elif name == "fc_2":
        st["num_outputs"], st["num_inputs"] = s.integer(), s.integer()
        layer.params = s.tensor()
        st["weights"], st["biases"] = s.alias(), s.alias()
        st["bias_mode"] = s.integer()  # 0 FC_HAS_BIAS, 1 FC_NO_BIAS
        st["multipliers"] = tuple(s.real() for _ in range(4))
    elif name == "affine_":
        layer.params = s.tensor()
        st["gamma"], st["beta"] = s.alias(), s.alias()
        st["mode"] = s.integer()  # 0 CONV_MODE, 1 FC_MODE
    elif name in ("max_pool_2", "avg_pool_2"):
        keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        st.update({k: s.integer() for k in keys})
    elif name in ("relu_", "add_prev_"):
        pass
    else:
        s.pos = start
        raise s.fail(f"unsupported dlib layer {name!r}")
    return layer


def read_network(path: str | Path) -> DlibNetwork:
    """Every layer of the dlib DNN model file ``path`` (:class:`DlibNetwork`).

    Reads ``loss_metric`` networks over ``input_rgb_image_sized`` built from the layers in
    :func:`_details` (what dlib's face-recognition ResNet uses). Raises
    :class:`DlibFormatError` naming the file and byte offset for anything else: another
    kind of dlib file (a shape predictor, a detector), a truncated or corrupt one, bytes
    left over at the end.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DlibFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    s = _Stream(data, str(path))
    try:
        s.version(1, "add_loss_layer")
        loss = s.string()
    except DlibFormatError:
        raise DlibFormatError(
            f"{path}: not a dlib DNN model file (a shape predictor, detector or other dlib "
            "object, or not dlib at all)"
        ) from None
    if loss != "loss_metric_2":
        raise DlibFormatError(f"{path}: a dlib network with loss {loss!r}, not loss_metric_2")
    loss_settings = {"margin": s.real(), "distance_threshold": s.real()}
    wrappers: list[int] = []
    while True:
        v = s.integer()
        if v not in (1, 2, 3):
            raise s.fail(f"unexpected layer wrapper version {v}")
        wrappers.append(v)
        if v == 3:  # the bottom add_layer, over the input layer
            break
        if len(wrappers) > 10_000:
            raise s.fail("no input layer")
    input_name = s.string()
    if input_name != "input_rgb_image_sized":
        raise s.fail(f"input layer {input_name!r}, expected input_rgb_image_sized")
    input_settings = {
        "avg_rgb": (s.real(), s.real(), s.real()),
        "nr": s.integer(),
        "nc": s.integer(),
    }
    layers: list[DlibLayer] = []
    for i in range(wrappers.count(2) + 1):
        layers.append(_details(s))
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, disabled
            s.boolean()
        for _ in range(3):  # x_grad, cached_output, params_grad: buffers, no weights
            s.tensor()
        if i == 0 and s.integer() != 1:  # version 3 of the bottom add_layer adds one integer
            raise s.fail("bottom layer: unexpected trailer")
    if s.pos != len(data):
        raise s.fail(f"{len(data) - s.pos:,} bytes left after the last layer")
    return DlibNetwork(loss, loss_settings, input_name, input_settings, wrappers, layers, len(data))
