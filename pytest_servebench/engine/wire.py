"""Frames between pytest and its engine process: a 4-byte length, then a pickle.

Both ends are this package, over a socket pair nobody else holds, so pickle is safe here and
keeps records (dicts, floats, None) as they are at a fraction of JSON's cost."""

from __future__ import annotations

import pickle
import struct
from typing import Any

_LENGTH = struct.Struct("!I")
HEADER = _LENGTH.size


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list[Any]:
    """Take every whole message off the front of `buffer` (a partial one stays)."""
    messages = []
    start = 0
    end = len(buffer)
    while end - start >= HEADER:
        (size,) = _LENGTH.unpack_from(buffer, start)
        if end - start - HEADER < size:
            break
        begin = start + HEADER
        messages.append(pickle.loads(buffer[begin : begin + size]))
        start = begin + size
    if start:
        del buffer[:start]
    return messages
