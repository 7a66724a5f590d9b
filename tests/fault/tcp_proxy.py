"""A loopback TCP proxy a test controls: forward, cut, half-open, throttle, restore.

Put it between the bridge and whatever it talks to (Kafka, the DropCopy or Predexon
simulator) and break the network on purpose:

- `cut()`: every open connection is reset (RST, as a dead peer's kernel would answer) and
  new ones are reset right after accept, until `restore()`. The client sees errors at once.
- `half_open()`: nothing is forwarded any more in either direction, but no connection is
  closed and new ones are accepted and then ignored: what a silently dropped route or a
  frozen middlebox looks like. The client only notices through its own timeouts or
  keepalives. `restore()` resumes forwarding on the connections that are still open (bytes
  sit in the kernel buffers meanwhile, like TCP retransmits after a short outage).
- `throttle(bytes_per_s, latency_s)`: a slow link; `throttle(None, 0)` lifts it.

Threads, not asyncio: the proxy must keep working while the test's main thread blocks in
`wait_until` or in a Kafka client call. Two pump threads per connection, each blocking in
`select` with a short timeout so state changes take effect within `POLL_S`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

POLL_S = 0.05
"""How often a pump re-reads the proxy's state while it has nothing to forward."""

CHUNK = 65536

KERNEL_BUFFER = 16384
"""SO_RCVBUF towards the target and SO_SNDBUF towards the client when the proxy's own queue
is sized (`buffer_bytes`): small values are always allowed (Linux doubles them)."""


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer gets ECONNRESET instead of a clean EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    """Listens on 127.0.0.1:`port` (0 = a free port) and forwards to `target_host:target_port`.

    Use as a context manager. `address` is "127.0.0.1:<port>" for the client's config.
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        port: int = 0,
        buffer_bytes: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self._buffer_bytes = buffer_bytes
        """The link's queue per direction: bytes read and not yet delivered (throttled, that
        is what sits between the ends). None: one chunk, and the kernel buffers at their
        autotuned sizes, megabytes on loopback. Given, both kernel buffers are kept small
        (`KERNEL_BUFFER`), so this is nearly all a connection's bytes in flight."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._mode = "forward"  # "forward" | "cut" | "half_open"
        self._bytes_per_s: float | None = None
        self._latency_s = 0.0
        self._stopping = threading.Event()
        self.accepted = 0
        """Connections accepted so far (also during faults): a test can wait for reconnects."""
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )

    # -- control --------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def start(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def cut(self) -> int:
        """Reset every open connection and every new one until `restore()`; how many were open."""
        with self._lock:
            self._mode = "cut"
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close(reset=True)
        return len(conns)

    def half_open(self) -> None:
        """Stop forwarding without closing anything (see the module docstring)."""
        with self._lock:
            self._mode = "half_open"

    def restore(self) -> None:
        """Forward again, on surviving connections and new ones."""
        with self._lock:
            self._mode = "forward"

    def throttle(self, bytes_per_s: float | None, latency_s: float = 0.0) -> None:
        """Limit each direction of each connection to `bytes_per_s` and delay every chunk by
        `latency_s` (a slow, far link). `None, 0` is an unthrottled loopback again."""
        self._bytes_per_s = bytes_per_s
        self._latency_s = latency_s

    def open_connections(self) -> int:
        with self._lock:
            self._conns = [c for c in self._conns if not c.closed.is_set()]
            return len(self._conns)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self._acceptor.is_alive():
            self._acceptor.join(2)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- machinery ------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], POLL_S)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            self.accepted += 1
            if self._mode == "cut":
                _reset(client)
                continue
            try:
                upstream = self._connect()
            except OSError:
                _reset(client)  # the target is down: the client sees a refused/reset link
                continue
            if self._buffer_bytes is not None:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(True)
            conn = _Conn(client, upstream)
            with self._lock:
                if self._mode == "cut":
                    conn.close(reset=True)
                    continue
                self._conns.append(conn)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(conn, src, dst), name="proxy-pump", daemon=True
                ).start()

    def _connect(self) -> socket.socket:
        """A connection to the target, its receive buffer set before the handshake (the
        window it advertises is fixed then)."""
        if self._buffer_bytes is None:
            return socket.create_connection(self.target, timeout=5)
        host, port = self.target
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
            sock.settimeout(5)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        """Copy src -> dst while the mode is "forward"; hold still while half-open. Reads run
        ahead of deliveries by up to the link's queue (`buffer_bytes`); each chunk is
        delivered `latency_s` after it was read, no faster than `bytes_per_s`."""
        queue: deque[tuple[float, bytes]] = deque()  # (deliverable at, chunk)
        queued = 0
        link_free = 0.0  # when the link has sent what it was given (monotonic)
        try:
            while not conn.closed.is_set() and not self._stopping.is_set():
                if self._mode != "forward":
                    # Half-open: read nothing, so the sender's kernel buffers fill up and
                    # its writes stall, exactly as on a link that stopped delivering.
                    time.sleep(POLL_S)
                    continue
                # Wait for whichever comes first: bytes to read (while the queue has room)
                # or the queue's head being due.
                due = max(queue[0][0], link_free) if queue else None
                wait = POLL_S if due is None else min(max(due - time.monotonic(), 0.0), POLL_S)
                room = (self._buffer_bytes or CHUNK) - queued
                if room > 0:
                    readable, _, _ = select.select([src], [], [], wait)
                    if readable:
                        data = src.recv(min(CHUNK, room))
                        if not data:
                            break  # EOF from one side: close both, like a proxy would
                        queue.append((time.monotonic() + self._latency_s, data))
                        queued += len(data)
                elif wait > 0:
                    time.sleep(wait)
                now = time.monotonic()
                if due is None or due > now:
                    continue
                _, data = queue.popleft()
                queued -= len(data)
                dst.sendall(data)
                if self._bytes_per_s:
                    link_free = max(link_free, now) + len(data) / self._bytes_per_s
        except OSError:
            pass
        conn.close()
