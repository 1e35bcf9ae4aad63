"""The safetensors file format in NumPy: reading a file as untrusted input, and writing one.

This module owns the bytes of a `.safetensors` file: the 8-byte little-endian header length, the
JSON header (`{name: {dtype, shape, data_offsets}}` and an optional `__metadata__`) and the data
region after it. Everything a file declares (header length, JSON, dtypes, shapes, byte ranges) is
checked before any tensor is read, and each problem is a one-line ValueError naming the file (see
`bad`). Only the float dtypes GPT-2 ships in (F32, F16, BF16) are read, as float32; files are
written as float32. It knows nothing of tensor names, `config.json` or GPT-2: `hf.py` maps those
onto this format.
"""
import json
import math
import os

import numpy as np

from ..atomic import open_atomic
from ..errors import one_line

MAX_HEADER_BYTES = 100 * 2**20
# Bytes per element of safetensors' dtypes: any may appear (a bool attention mask, say), but
# only the float ones that GPT-2's weights come in are read; `FLOATS` says how, in NumPy (BF16
# as raw 16-bit patterns, widened below).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
             "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
FLOATS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_header(path):
    """The checked header of safetensors file `path`.

    Returns:
        ({name: (dtype, shape, begin, end)}, data_start): byte ranges relative to the data
        region, which starts at byte `data_start` of the file.

    Raises:
        ValueError: a malformed header, dtype, shape or byte range (one line naming the file).
    """
    size = os.path.getsize(path)
    if size < 8:
        raise bad(path, f"is {size} bytes long, too short for the 8-byte header length; "
                        "it is not a safetensors file")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise bad(path, f"declares a {length}-byte header but the file has {size} bytes (a header is at "
                            f"most {MAX_HEADER_BYTES} bytes and fits in the file); it is truncated or not a "
                            "safetensors file")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateName as e:
        raise bad(path, f"has a header that names {e} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(path, f"has a header that is not JSON ({one_line(e, 200)}); it is not a safetensors file") from None
    metadata = header.pop("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise bad(path, "has a header that is not a JSON object of tensors (and an optional __metadata__ object)")
    data_size = size - 8 - length
    entries = {name: _check_entry(path, name, entry, data_size) for name, entry in header.items()}
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise bad(path, f"stores tensors {short(first)} and {short(second)} in overlapping bytes")
    return entries, 8 + length


def _check_entry(path, name, entry, data_size):
    """(dtype, shape, begin, end) of one header entry, or a ValueError saying what is wrong."""
    where = f"tensor {short(name)}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise bad(path, f"{where} is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise bad(path, f"{where} has the unknown dtype {short(dtype)}")
    if not _naturals(shape):
        raise bad(path, f"{where} has shape {short(shape)}, not a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_size:
        raise bad(path, f"{where} has data_offsets {short(offsets)}, not [begin, end] within the "
                        f"{data_size}-byte data region")
    needed = math.prod(shape) * _ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != needed:
        raise bad(path, f"{where} has {offsets[1] - offsets[0]} bytes but {dtype} of shape {short(shape)} "
                        f"takes {needed}")
    return dtype, tuple(shape), offsets[0], offsets[1]


class SafeTensors:
    """A safetensors file whose header has been checked; tensors are read one at a time.

    Attributes:
        path: the file.
        shapes: `{name: shape}` of every tensor in it.
        dtypes: `{name: dtype}`, safetensors' names ('F32', 'BF16', ...).
    """

    def __init__(self, path):
        self.path = path
        self._entries, self._start = read_header(path)
        self.shapes = {name: entry[1] for name, entry in self._entries.items()}
        self.dtypes = {name: entry[0] for name, entry in self._entries.items()}

    def read(self, name):
        """Tensor `name` as a float32 array of its shape (F16 and BF16 widened exactly)."""
        dtype, shape, begin, end = self._entries[name]
        if dtype not in FLOATS:
            raise bad(self.path, f"tensor {short(name)} has dtype {dtype}; GPT-2 weights are one of "
                                 f"{sorted(FLOATS)}")
        raw = np.empty(end - begin, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            if f.readinto(raw) != raw.size:
                raise bad(self.path, f"ends inside tensor {short(name)}; it changed while being read")
        values = raw.view(FLOATS[dtype])
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32, copy=False).reshape(shape)


def write_safetensors(path, tensors, metadata=None):
    """Write `{name: array}` to `path` as float32 safetensors, atomically (temporary name, rename).

    Tensors are stored in name order; the header is padded with spaces to a multiple of 8 bytes
    and carries `__metadata__` (default `{"format": "pt"}`, which `transformers` expects).
    """
    arrays = {name: np.ascontiguousarray(tensors[name], dtype="<f4") for name in sorted(tensors)}
    header, offset = {"__metadata__": metadata or {"format": "pt"}}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open_atomic(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for array in arrays.values():
            f.write(array.tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# Small helpers


class _DuplicateName(ValueError):
    pass


def _unique_keys(pairs):
    """A JSON object hook that refuses a name given twice (json keeps the last one silently)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateName(short(key))
        seen.add(key)
    return dict(pairs)


def _naturals(value):
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def short(value, limit=80):
    """`repr(value)`, cut to `limit` characters, for quoting untrusted names and values in errors."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad(path, problem):
    """The ValueError for a malformed safetensors file: 'safetensors file PATH PROBLEM'."""
    return ValueError(f"safetensors file {path} {problem}")
