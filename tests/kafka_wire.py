"""Two Kafka requests written by hand, for what no client library lets a test do: take a
transactional id's producer id (InitProducerId) and append a transactional batch under it
without registering the partition with the coordinator (Produce). On a broker that does
not verify transactional writes (`transaction.partition.verification.enable=false`) that
batch is a hanging transaction: open on its partition, unknown to the coordinator, the
state a late produce request or a marker the coordinator never wrote leaves behind.

Plain, non-flexible request versions (FindCoordinator v1, InitProducerId v1, Produce v3)
over one loopback connection; the record batch is format v2 with its CRC-32C.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

_FIND_COORDINATOR = 10
_INIT_PRODUCER_ID = 22
_PRODUCE = 0
_TRANSACTIONAL = 0x10
"""Record batch attribute: the batch belongs to a transaction."""


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _varint(value: int) -> bytes:
    """A zigzag varint (record fields)."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _record(key: bytes | None, value: bytes | None) -> bytes:
    body = b"\x00" + _varint(0) + _varint(0)  # attributes, timestamp delta, offset delta
    for field in (key, value):
        body += _varint(-1) if field is None else _varint(len(field)) + field
    body += _varint(0)  # no headers
    return _varint(len(body)) + body


def transactional_batch(
    producer_id: int, epoch: int, sequence: int, key: bytes | None, value: bytes | None
) -> bytes:
    """One record in a transactional record batch (format v2)."""
    now_ms = int(time.time() * 1000)
    after_crc = struct.pack(
        ">hiqqqhii", _TRANSACTIONAL, 0, now_ms, now_ms, producer_id, epoch, sequence, 1
    ) + _record(key, value)
    after_length = struct.pack(">ib", -1, 2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


@dataclass
class Wire:
    """One connection to a broker, one request at a time."""

    host: str
    port: int
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), self.timeout)
        self._correlation = 0

    def close(self) -> None:
        self._sock.close()

    def _call(self, api_key: int, version: int, body: bytes) -> bytes:
        self._correlation += 1
        header = struct.pack(">hhi", api_key, version, self._correlation) + _string("test-wire")
        request = header + body
        self._sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", self._read(4))[0]
        response = self._read(size)
        correlation = struct.unpack(">i", response[:4])[0]
        assert correlation == self._correlation, (correlation, self._correlation)
        return response[4:]

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def init_producer_id(self, transactional_id: str, timeout_ms: int = 60_000) -> tuple[int, int]:
        """(producer id, epoch) for `transactional_id` from this broker, its transaction
        coordinator (a broker of its own: FindCoordinator first, which creates the
        transaction log), retried while the coordinator loads; raises on any other error."""
        deadline = time.monotonic() + self.timeout
        while True:
            body = self._call(_FIND_COORDINATOR, 1, _string(transactional_id) + b"\x01")
            error = struct.unpack(">h", body[4:6])[0]
            if error == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"FindCoordinator {transactional_id}: error code {error}")
            time.sleep(0.2)
        while True:
            body = self._call(
                _INIT_PRODUCER_ID, 1, _string(transactional_id) + struct.pack(">i", timeout_ms)
            )
            _throttle, error, producer_id, epoch = struct.unpack(">ihqh", body[:16])
            # 14 COORDINATOR_LOAD_IN_PROGRESS, 15 COORDINATOR_NOT_AVAILABLE, 16 NOT_COORDINATOR
            if error in (14, 15, 16) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if error:
                raise RuntimeError(f"InitProducerId {transactional_id}: error code {error}")
            return producer_id, epoch

    def produce(self, transactional_id: str, topic: str, partition: int, batch: bytes) -> int:
        """Append `batch` to `topic` [`partition`] (acks=all): the partition's error code."""
        body = (
            _string(transactional_id)
            + struct.pack(">hi", -1, 30_000)
            + struct.pack(">i", 1)
            + _string(topic)
            + struct.pack(">i", 1)
            + struct.pack(">i", partition)
            + struct.pack(">i", len(batch))
            + batch
        )
        response = self._call(_PRODUCE, 3, body)
        # responses[1]: topic name, partitions[1]: index, error_code, ...
        name_length = struct.unpack(">h", response[4:6])[0]
        at = 6 + name_length + 4
        _index, error = struct.unpack(">ih", response[at : at + 6])
        return int(error)
