"""Replay throughput of one bridge process against two, in the same run.

Run: `.venv/bin/python -m bench.scaling [--prefill N] [--rounds R]`

The workload has two streams, so that a second process has something to take: two
executions streams of all firms (`a` and `b`, each into its own topic) replay the same
prefilled simulator journal from the epoch. "1 process" runs both streams in one
`polybridge run`; "2 processes" starts two with the same configuration, and the stream
group gives each one stream. Every scenario gets a fresh local Apache Kafka; the simulator
(`polybridge sim dropcopy`, no auth) serves all of them. records/s = records of both
topics / (the reader's wall clock at the last record - Kafka CreateTime of the first).
Rounds alternate 1, 2, 1, 2, ... so drift affects both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.common import machine_facts, markdown_table
from bench.dropcopy_e2e import (
    BRIDGE_PREFIX_LEN,
    FIRMS,
    PARTICIPANT,
    Reader,
    bridge_process,
    journal_executions,
    simulator,
    wrapper_fields,
)

STREAMS = ("a", "b")


def config(workdir: Path, bootstrap: str, address: str, prefix: str) -> Path:
    firms = ", ".join(f'"{f}"' for f in FIRMS)
    streams = "".join(
        f'[[dropcopy.streams]]\nkind = "executions"\nname = "{name}"\n'
        f'topic = "executions-{name}"\nstart = "1970-01-01T00:00:00Z"\nfirms = [{firms}]\n'
        for name in STREAMS
    )
    path = workdir / f"{prefix}bridge.toml"
    path.write_text(
        f'app_id = "{prefix}app"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{prefix}"\n'
        f'[dropcopy]\nendpoint = "{address}"\ntls = false\nparticipant_id = "{PARTICIPANT}"\n'
        + streams
    )
    return path


def measure(readers: list[Reader], expected: int, timeout: float = 600) -> tuple[float, int]:
    """(records/s, duplicates) once every reader has seen `expected` records."""
    ids: list[set[bytes]] = [set() for _ in readers]
    counts = [0] * len(readers)
    first_ms, last_at = float("inf"), time.time()
    deadline = time.monotonic() + timeout
    while min(counts) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {counts} of {expected:,} each within {timeout:.0f} s")
        for i, reader in enumerate(readers):
            messages = reader.batch(0.01)
            if not messages:
                continue
            last_at = time.time()
            for m in messages:
                first_ms = min(first_ms, m.timestamp()[1])
                ids[i].add(wrapper_fields(m.value(), BRIDGE_PREFIX_LEN)[0])
            counts[i] += len(messages)
    total = expected * len(readers)
    return total / (last_at - first_ms / 1000), sum(counts) - sum(len(s) for s in ids)


@contextlib.contextmanager
def processes(path: Path, count: int) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(bridge_process(path))
        yield


def scenario(workdir: Path, address: str, count: int, expected: int) -> tuple[float, int]:
    from bridge.embedded import EmbeddedBroker

    prefix = f"s{uuid.uuid4().hex[:6]}."
    with EmbeddedBroker() as broker:
        path = config(workdir, broker.bootstrap_servers, address, prefix)
        with processes(path, count):
            readers = [
                Reader(broker.bootstrap_servers, f"{prefix}executions-{name}") for name in STREAMS
            ]
            try:
                return measure(readers, expected)
            finally:
                for reader in readers:
                    reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp), args.prefill, 0) as address:
        expected = journal_executions(address)
        print(f"journal: {expected:,} executions, replayed once per stream", flush=True)
        results: dict[int, list[float]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for count in (1, 2):
                rate, dups = scenario(Path(tmp), address, count, expected)
                results[count].append(rate)
                print(
                    f"  round {round_ + 1}, {count} process(es): {rate:,.0f} records/s, "
                    f"{dups} duplicates",
                    flush=True,
                )
                rows.append((round_ + 1, count, f"{rate:,.0f}", dups))
    print()
    print(machine_facts())
    print(f"command: python -m bench.scaling --prefill {args.prefill} --rounds {args.rounds}")
    print(f"took {time.monotonic() - started:.0f} s\n")
    print(markdown_table(["round", "processes", "records/s (both streams)", "duplicates"], rows))
    best = {count: max(rates) for count, rates in results.items()}
    print(
        f"\nbest: 1 process {best[1]:,.0f}/s, 2 processes {best[2]:,.0f}/s "
        f"(x{best[2] / best[1]:.2f})"
    )


if __name__ == "__main__":
    main()
