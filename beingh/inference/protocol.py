"""Wire format of the policy server: msgpack with numpy arrays as typed buffers. No pickle anywhere.

Arrays travel as `{"__ndarray__": True, "data": <bytes>, "dtype": <str>, "shape": [...]}` and numpy
scalars as `{"__npgeneric__": True, "data": <number>, "dtype": <str>}`, the layout of openpi's
`msgpack_numpy` (keys are msgpack bin strings there; both bin and str keys are accepted here), so an
openpi websocket client can talk to a beingh server. Only plain numeric dtypes (bool, int, uint,
float) are accepted in either direction: object, void, string and complex arrays are refused, so a
message can never make the receiver build arbitrary Python objects.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

NUMERIC_DTYPE_KINDS = frozenset("biuf")
"""numpy dtype kinds allowed on the wire: bool, signed int, unsigned int, float."""
MAX_ARRAY_DIMS = 8
API_KEY_ENV = "BEINGH_API_KEY"
"""Environment variable with the API key, read by `beingh serve` and `PolicyClient` when none is given."""
MAX_NESTING = 32
"""Deepest map/list nesting accepted in a message."""


class ProtocolError(ValueError):
    """A message that is not valid msgpack or breaks the array encoding rules."""


class ObservationError(ValueError):
    """A decoded observation that does not match the policy (missing key, wrong type or shape)."""


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in NUMERIC_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"{where}: dtype {dtype.str!r} is not allowed (only bool/int/uint/float arrays)")


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype, "encode")
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "encode")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode object of type {type(obj).__name__} (send numbers, str, bytes, lists, "
                    "dicts or numeric numpy arrays)")


def _field(obj: dict, name: str) -> Any:
    """Read a field written with either a str or a bin (bytes) key."""
    if name in obj:
        return obj[name]
    return obj.get(name.encode())


def _decode_dtype(value: Any, where: str) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: array dtype must be a string, got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except TypeError as err:
        raise ProtocolError(f"{where}: unknown array dtype {value!r}") from err
    _check_dtype(dtype, where)
    return dtype


def _decode_ndarray(obj: dict, where: str) -> np.ndarray:
    dtype = _decode_dtype(_field(obj, "dtype"), where)
    data, shape = _field(obj, "data"), _field(obj, "shape")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: array data must be bytes, got {type(data).__name__}")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_ARRAY_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in shape)
    ):
        raise ProtocolError(f"{where}: array shape must be a list of at most {MAX_ARRAY_DIMS} ints in [0, 2**31), "
                            f"got {shape!r}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"{where}: array data has {len(data)} bytes, shape {list(shape)} of {dtype.str} "
                            f"needs {expected}")
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except ValueError as err:
        raise ProtocolError(f"{where}: cannot build a {list(shape)} {dtype.str} array: {err}") from err


def _decode_scalar(obj: dict, where: str) -> np.generic:
    dtype = _decode_dtype(_field(obj, "dtype"), where)
    value = _field(obj, "data")
    if not isinstance(value, bool | int | float):
        raise ProtocolError(f"{where}: numpy scalar data must be a number, got {type(value).__name__}")
    try:
        return dtype.type(value)
    except (OverflowError, ValueError, TypeError) as err:
        raise ProtocolError(f"{where}: {value!r} does not fit numpy {dtype.name}: {err}") from err


def _decode(obj: Any, where: str, depth: int = 0) -> Any:
    """Turn array/scalar maps into numpy values, everywhere in the message; `where` names the field."""
    if depth > MAX_NESTING:
        raise ProtocolError(f"{where or 'message'}: nested deeper than {MAX_NESTING} levels")
    if isinstance(obj, dict):
        if _field(obj, "__ndarray__") is True:
            return _decode_ndarray(obj, where or "message")
        if _field(obj, "__npgeneric__") is True:
            return _decode_scalar(obj, where or "message")
        return {key: _decode(value, _join(where, key), depth + 1) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_decode(value, f"{where}[{i}]", depth + 1) for i, value in enumerate(obj)]
    return obj


def _join(where: str, key: Any) -> str:
    name = key if isinstance(key, str) else repr(key)
    return f"{where}/{name}" if where else name


def packb(obj: Any) -> bytes:
    """Serialize a message (dicts, lists, str, numbers, bytes and numeric numpy arrays/scalars)."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Deserialize a message; raises `ProtocolError` (naming the field) on anything but valid msgpack with
    valid arrays and scalars."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary msgpack message, got {type(data).__name__}")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as err:
        raise ProtocolError(f"not a valid msgpack message: {err}") from err
    return _decode(message, "")
