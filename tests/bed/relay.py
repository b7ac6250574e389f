"""A TCP relay between two network namespaces: ``python -m bed.relay --listen-fd N --connect HOST:PORT``.

The listening socket is inherited (fd N), so it may live in another network namespace than the relay: a socket
keeps the namespace it was created in. The bed uses it both ways:

- host loopback -> the bed's kube-apiserver: the socket is bound on the host's 127.0.0.1, the relay runs inside
  the bed's network namespace (``nsenter --net``) and connects to 127.0.0.1:6443 there;
- the bed's node IP -> a host loopback port (the test PostgreSQL): the socket is created inside the bed's
  namespace (:func:`listen_in_netns`), the relay runs on the host.

No port is ever chosen by guessing: the bed binds port 0 and passes the socket.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_BUFFER = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve_one(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def serve(listener: socket.socket, target: tuple[str, int]) -> None:
    """Accept forever; two threads per connection (few, long-lived connections: watches, psql sessions)."""
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, target), daemon=True).start()


def listen_in_netns(netns: Path, host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket bound inside the network namespace ``netns`` (e.g. /proc/PID/ns/net).

    setns() moves only the calling thread, so a short-lived thread creates the socket and this thread stays put.
    """
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            result.append(sock)
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def listen_on_host(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bed.relay")
    parser.add_argument("--listen-fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--connect", required=True, help="HOST:PORT, in this process's network namespace")
    args = parser.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    listener = socket.socket(fileno=args.listen_fd)
    serve(listener, (host, int(port)))


if __name__ == "__main__":
    main()
