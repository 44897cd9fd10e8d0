"""The floor's child: answers each length-prefixed frame with itself, over a Unix socket."""

from __future__ import annotations

import socket
import struct
import sys


def main(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buffer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffer += data
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">I", buffer)
            if len(buffer) < 4 + size:
                break
            frame, buffer = buffer[: 4 + size], buffer[4 + size :]
            sock.sendall(frame)


if __name__ == "__main__":
    main(sys.argv[1])
