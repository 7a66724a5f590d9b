"""When the open transaction commits (group commit).

A transaction with records commits as soon as the stream has nothing more queued: the
previous commit has returned (a stream commits one transaction at a time) and everything
that arrived meanwhile is in this one. Under light load each batch commits at once; under
heavy load batches arrive while a commit runs, so transactions grow with the load and
throughput holds. Bounds on top: `max_records` per transaction, and `max_latency_s` for the
oldest record when batches never stop coming (what a downstream reader waits for at most,
plus the commit). A transaction holding only heartbeats (a newer position, no records)
commits at most every `heartbeat_interval_s`: the position must reach Kafka, but committing
it on every upstream heartbeat would cost a transaction each.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import PipelineSettings


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    max_records: int
    max_latency_s: float
    heartbeat_interval_s: float

    @classmethod
    def of(cls, settings: PipelineSettings) -> CommitPolicy:
        return cls(
            settings.max_batch_records,
            settings.max_latency_ms / 1000,
            settings.heartbeat_commit_interval_s,
        )

    def deadline(self, first_record_at: float | None, last_commit_at: float) -> float:
        """The monotonic time by which the open transaction must commit."""
        if first_record_at is not None:
            return first_record_at + self.max_latency_s
        return last_commit_at + self.heartbeat_interval_s

    def due(
        self,
        records: int,
        first_record_at: float | None,
        last_commit_at: float,
        now: float,
        idle: bool,
    ) -> bool:
        """Whether the open transaction should commit now; `idle`: nothing more is queued."""
        if first_record_at is not None and idle:
            return True
        return records >= self.max_records or now >= self.deadline(first_record_at, last_commit_at)
