"""Reading what a safetensors file holds (names, dtypes, shapes) from its header alone, without torch or the weights.

The format: 8 bytes (little-endian u64) giving the header's length, then the header, a JSON object mapping each
tensor name to ``{"dtype", "shape", "data_offsets"}`` (plus an optional ``__metadata__``).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

# A header is a few KB per hundred tensors; past this the file is not a safetensors file we will read.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(f: BinaryIO) -> dict[str, Any]:
    """The tensors of an open safetensors file (a local file or an object-store stream), ``__metadata__`` left out.
    Raises ValueError when the bytes are not a safetensors header."""
    head = f.read(8)
    if len(head) != 8:
        raise ValueError("too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"a safetensors header of {n} bytes is not plausible")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header
