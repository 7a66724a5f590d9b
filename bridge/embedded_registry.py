"""A local Schema Registry for the tests, the demo and `polybridge broker --registry`.

Apicurio Registry 2.x (Apache 2.0, runs on Java 17) with in-memory storage, spoken to
through its Confluent-compatible API (`/apis/ccompat/v7`), which confluent-kafka's
`SchemaRegistryClient`, `AvroDeserializer` and the Java reader use like any Confluent
Schema Registry. Its distribution (a Quarkus runner jar and its `lib/`) is resolved by the
committed Maven project `kafka/pom.xml` (`dependency:unpack@apicurio-registry`) on first
use and unpacked into `kafka/target/registry-<pom digest>/`; the archive stays in Maven's
local repository, so a second checkout unpacks without downloading.

Apicurio enforces no compatibility rule until one is set: `start()` sets the global level
(BACKWARD unless told otherwise) through `PUT /apis/ccompat/v7/config`, as a user of a real
registry must (see docs/operations.md). Nothing survives `stop()`: storage is in memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from bridge.embedded import die_with_parent, free_port, java_binary, pom_path, port_free
from bridge.errors import BridgeError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""How long `start()` waits for the registry to answer (3-5 s on 2 cores)."""

STOP_TIMEOUT_S = 20.0
"""How long `stop()` waits after SIGTERM before it SIGKILLs (it stops in well under 1 s)."""

JVM_OPTIONS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""Bounded heap (each test worker may run one); C1 only and the serial collector start it
about 20% faster on 2 cores and keep its thread count low, and it serves little load."""

DEFAULT_COMPATIBILITY = "BACKWARD"
"""The global compatibility level set at start: Confluent Schema Registry's default."""

CCOMPAT = "/apis/ccompat/v7"
"""The Confluent-compatible API: the URL to give the bridge and every client."""

_LOCK = "registry.lock"


def registry_home() -> Path:
    """The unpacked distribution, resolved with Maven on first use (file-locked, keyed by
    the pom's content like the broker's classpath)."""
    pom = pom_path()
    target = pom.parent / "target"
    target.mkdir(exist_ok=True)
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    home = target / f"registry-{digest}"
    with open(target / _LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _runner_jar(home) is not None:
            return home
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BridgeError(
                "the local Schema Registry needs Maven (mvn) once, to fetch Apicurio Registry "
                "from Maven Central: install it (apt-get install maven), or set "
                "schema_registry.url to a running registry"
            )
        for old in target.glob("registry-*"):  # an earlier pom's copy: 150 MB each
            shutil.rmtree(old, ignore_errors=True)
        partial = target / f"registry-{digest}.tmp"
        log.info("resolving Apicurio Registry with Maven pom=%s (first use only)", pom)
        done = subprocess.run(
            [
                mvn,
                "--batch-mode",
                "--quiet",
                "-f",
                str(pom),
                "dependency:unpack@apicurio-registry",
                f"-Dregistry.outputDirectory={partial}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or _runner_jar(partial) is None:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise BridgeError(
                f"Maven could not resolve Apicurio Registry from {pom} (exit "
                f"{done.returncode}): " + " | ".join(tail)
            )
        partial.replace(home)
        return home


def _runner_jar(home: Path) -> Path | None:
    found = sorted(home.glob("*-runner.jar")) if home.is_dir() else []
    return found[0] if found and (home / "lib").is_dir() else None


class EmbeddedRegistry:
    """An Apicurio Registry subprocess on 127.0.0.1 with in-memory storage.

    Use as a context manager, or call `start()` / `stop()`. `url` is the Confluent-compatible
    endpoint to configure as `schema_registry.url`.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        compatibility: str = DEFAULT_COMPATIBILITY,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = Path(log_path) if log_path is not None else None
        self.compatibility = compatibility
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedRegistry:
        """Start the registry, wait until it answers, set its compatibility level."""
        if self._proc is not None:
            raise BridgeError("embedded schema registry already started")
        java, home = java_binary(), registry_home()
        runner = _runner_jar(home)
        assert runner is not None
        if not port_free(self.port):
            raise BridgeError(f"embedded schema registry: port {self.port} is already in use")
        # Quarkus writes its temporary files under the working directory and java.io.tmpdir.
        self._tmp = Path(tempfile.mkdtemp(prefix="polybridge-registry-"))
        out_path = self.log_path or self._tmp / "registry.log"
        self._out = open(out_path, "ab")  # noqa: SIM115 (closed in stop())
        log.info("starting embedded schema registry port=%d log=%s", self.port, out_path)
        self._proc = subprocess.Popen(
            [
                *die_with_parent(),
                java,
                *JVM_OPTIONS,
                f"-Djava.io.tmpdir={self._tmp}",
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.http.port={self.port}",
                "-jar",
                str(runner),
            ],
            cwd=self._tmp,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(timeout, out_path)
            self._request("PUT", "/config", {"compatibility": self.compatibility})
        except BaseException:
            self.stop()
            raise
        log.info("embedded schema registry ready url=%s", self.url)
        return self

    def _wait_ready(self, timeout: float, out_path: Path) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                tail = out_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise BridgeError(
                    f"embedded schema registry exited with status {proc.returncode} on start "
                    f"(port {self.port}): {' | '.join(tail) or 'no output'}"
                )
            if time.monotonic() > deadline:
                raise BridgeError(
                    f"embedded schema registry on port {self.port} did not answer within "
                    f"{timeout:.0f} s: {last} (log: {out_path})"
                )
            try:
                self._request("GET", "/subjects")
                return
            except (OSError, urllib.error.URLError) as exc:  # not listening yet
                last = exc
                time.sleep(0.1)

    def _request(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the registry (SIGKILL after `timeout`); everything it held is gone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded schema registry ignored SIGTERM, killing port=%d", self.port)
                proc.kill()
                proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedRegistry:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
