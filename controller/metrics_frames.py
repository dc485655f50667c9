"""The messages between the controller and the process serving its metrics port, over a socket pair.

One message is a JSON header (a mapping, its "kind" first) and a body of bytes (the text of /metrics, or
nothing), each prefixed by its length: 8 bytes, two unsigned 32-bit big-endian numbers, then the header,
then the body. The standard library alone, so that both ends can read it without anything else.

From the controller: SETUP once, first (what the server needs to start: TLS, limits, how to reach the API
server), then a FRAME every second or so (the text of /metrics, the main loop's verdict on its health,
whether this replica leads and has rebuilt, and the bearer token the API server takes). From the server:
LISTENING once it serves (or ERROR, and it exits), then an ACK of each frame, with the refusals of the
port since the last one (metrics_port_refused_total is counted by the controller, on its registry), and a
WANT when a scrape came: the controller sends a frame sooner than planned.
"""

from __future__ import annotations

import json
import struct
from typing import Any

SETUP = "setup"
FRAME = "frame"
LISTENING = "listening"
ERROR = "error"
ACK = "ack"
WANT = "want"

_LENGTHS = struct.Struct(">II")
#: A header or a body longer than this is no message of ours: the stream is broken, and the reader stops.
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 256 << 20


class BrokenStream(ValueError):
    """Bytes that are not a message: the other end is not one of ours, or wrote half of one."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One message, ready to write."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTHS.pack(len(head), len(body)) + head + body


class Decoder:
    """Bytes in, whole messages out, whatever the chunks the socket delivers them in."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """The messages `data` completes (header, body); raises BrokenStream on bytes that are not messages."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _LENGTHS.size:
            head_length, body_length = lengths(bytes(self._buffer[: _LENGTHS.size]))
            end = _LENGTHS.size + head_length + body_length
            if len(self._buffer) < end:
                break
            header = decode_header(bytes(self._buffer[_LENGTHS.size : _LENGTHS.size + head_length]))
            messages.append((header, bytes(self._buffer[_LENGTHS.size + head_length : end])))
            del self._buffer[:end]
        return messages


def decode_header(head: bytes) -> dict[str, Any]:
    try:
        header = json.loads(head)
    except ValueError as error:
        raise BrokenStream(f"a header that is not JSON ({error})") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise BrokenStream(f"a header without a kind: {head[:200]!r}")
    return header


def lengths(prefix: bytes) -> tuple[int, int]:
    """(header, body) lengths from the 8 bytes before them; raises BrokenStream past the bounds."""
    head_length, body_length = _LENGTHS.unpack(prefix)
    if head_length > MAX_HEADER_BYTES or body_length > MAX_BODY_BYTES:
        raise BrokenStream(f"a message of {head_length} + {body_length} bytes")
    return head_length, body_length


PREFIX_BYTES = _LENGTHS.size
