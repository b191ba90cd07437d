"""A TCP forwarder that adds delay: a distant vSensor on loopback (this kernel has no netem qdisc).

Each byte is held rtt/2 in each direction, then passed on unchanged: TLS goes through end to end, and
the link's only limit is the delay (a bounded buffer per direction, 256 MiB by default, far above what
a 100 ms round trip holds at loopback speed). Used by tests (a distant vSensor must still get every
packet once) and by bench/link.py (throughput against the round-trip time). Run it alone:

    python3 tests/delay_forwarder.py --listen 127.0.0.1:9443 --to 127.0.0.1:8443 --rtt-ms 100
"""

from __future__ import annotations

import argparse
import collections
import socket
import threading
import time

CHUNK = 1 << 20


class _Pipe:
    """One direction of one connection: a reader thread stamps what it reads, a writer thread sends
    each chunk when its time has come. EOF travels the same way (delayed too), then half-closes."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, limit: int, done):
        self.src, self.dst, self.delay, self.limit, self.done = src, dst, delay, limit, done
        self.items: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.cond = threading.Condition()
        self.moved = 0
        for fn in (self._read, self._write):
            threading.Thread(target=fn, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(CHUNK)
                with self.cond:
                    while self.held > self.limit:  # the far end is slow: stop reading (TCP pushes back)
                        self.cond.wait(0.1)
                    self.items.append((time.monotonic() + self.delay, data or None))
                    self.held += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            with self.cond:
                self.items.append((time.monotonic(), None))
                self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.items:
                        self.cond.wait()
                    due, data = self.items[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self.cond:
                    self.items.popleft()
                    self.held -= len(data or b"")
                    self.cond.notify_all()
                if data is None:
                    self.dst.shutdown(socket.SHUT_WR)
                    break
                self.dst.sendall(data)
                self.moved += len(data)
        except OSError:
            pass
        self.done()


class DelayForwarder:
    """Listens on `listen` (port 0: any free one, see .port) and forwards each connection to `target`
    with `rtt_ms` / 2 of delay in each direction. close() ends the listener and every connection."""

    def __init__(self, target: tuple[str, int], rtt_ms: float, listen: tuple[str, int] = ("127.0.0.1", 0),
                 limit: int = 256 << 20):
        self.target, self.delay, self.limit = target, rtt_ms / 2000.0, limit
        self.sock = socket.create_server(listen, reuse_port=False)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target, timeout=5)
                b.settimeout(None)
            except OSError:
                a.close()
                continue
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            closed = [0]

            def done(a=a, b=b, closed=closed):  # both directions finished: close both ends
                with self._lock:
                    closed[0] += 1
                    last = closed[0] == 2
                if last:
                    for s in (a, b):
                        s.close()

            with self._lock:
                self.conns += [a, b]
                self.accepted += 1
            _Pipe(a, b, self.delay, self.limit, done)
            _Pipe(b, a, self.delay, self.limit, done)

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()

    def __enter__(self) -> "DelayForwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True, help="host:port to forward to")
    ap.add_argument("--rtt-ms", type=float, required=True)
    a = ap.parse_args()
    lh, lp = a.listen.rsplit(":", 1)
    th, tp = a.to.rsplit(":", 1)
    fw = DelayForwarder((th, int(tp)), a.rtt_ms, (lh, int(lp)))
    print(f"forwarding 127.0.0.1:{fw.port} -> {a.to} with {a.rtt_ms:g} ms round trip", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fw.close()


if __name__ == "__main__":
    main()
