"""How fast the DropCopy simulator serves executions to one client.

Starts `polybridge sim dropcopy` in a subprocess (its own core) with a prefilled journal, then
replays the executions journal from `resume_time` = epoch several times in one client and
prints records/s per batch size. The client counts records by walking the response's
top-level fields (no full protobuf parse) so that the simulator, not the client, is measured;
`--decode` parses every response with the generated classes instead.

    .venv/bin/python -m bench.sim_throughput [--prefill 200000] [--batches 100,500] [--decode]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from polymarket.v1 import dropcopy_pb2

_METHOD = "/polymarket.v1.DropCopyAPI/CreateDropCopySubscription"
# Each measurement replays the journal at least this long, to average out warm-up.
_MIN_SECONDS = 2.0


def count_records(response: bytes) -> int:
    """Number of field-2 entries in a serialized response, without parsing them."""
    count = 0
    i = 0
    end = len(response)
    while i < end:
        tag = response[i]
        i += 1
        length = 0
        shift = 0
        while True:
            byte = response[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        i += length
        count += tag == 0x12
    return count


def start_simulator(prefill: int, batch: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "bridge.cli", "--log-level=WARNING", "sim", "dropcopy"]
    command += ["--prefill", str(prefill), "--rate", "0", "--batch", str(batch)]
    command += ["--no-auth", "--heartbeat", "0.2"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"address=(\S+)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return process, match.group(1)


def replay(address: str, journal_size: int, decode: bool) -> tuple[int, float]:
    """Replay all executions (all firms) until _MIN_SECONDS have passed."""
    firms = ["firms/acme-capital", "firms/bluefin-trading", "firms/cobalt-markets"]
    request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
        resume_time=Timestamp(seconds=0), firms=firms
    )
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(address, options=options) as channel:
        call_factory = channel.unary_stream(
            _METHOD,
            request_serializer=dropcopy_pb2.CreateDropCopySubscriptionRequest.SerializeToString,
        )
        total = 0
        started = time.perf_counter()
        while time.perf_counter() - started < _MIN_SECONDS:
            received = 0
            call = call_factory(request)
            for response in call:
                if decode:
                    n = len(
                        dropcopy_pb2.CreateDropCopySubscriptionResponse.FromString(
                            response
                        ).executions
                    )
                else:
                    n = count_records(response)
                received += n
                if n == 0 or received >= journal_size:
                    break
            call.cancel()
            total += received
        return total, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=200_000, help="records prefilled")
    parser.add_argument("--batches", default="100,250,500", help="batch sizes to measure")
    parser.add_argument("--decode", action="store_true", help="parse responses fully")
    args = parser.parse_args()
    for batch in (int(b) for b in args.batches.split(",")):
        process, address = start_simulator(args.prefill, batch)
        try:
            # Executions are ~58% of generated records; count them from one replay first.
            size, _ = replay_once(address)
            total, seconds = replay(address, size, args.decode)
            print(
                f"batch={batch:4d} executions={size} received={total} "
                f"seconds={seconds:.2f} records/s={total / seconds:,.0f}"
                + (" (decoded)" if args.decode else ""),
                flush=True,
            )
        finally:
            process.terminate()
            process.wait(10)


def replay_once(address: str) -> tuple[int, float]:
    """Executions held by the journal: replay once to the first heartbeat."""
    request = dropcopy_pb2.CreateDropCopySubscriptionRequest(
        resume_time=Timestamp(seconds=0),
        firms=["firms/acme-capital", "firms/bluefin-trading", "firms/cobalt-markets"],
    )
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream(
            _METHOD,
            request_serializer=dropcopy_pb2.CreateDropCopySubscriptionRequest.SerializeToString,
        )(request)
        count = 0
        started = time.perf_counter()
        for response in call:
            n = count_records(response)
            if n == 0:
                break
            count += n
        call.cancel()
        return count, time.perf_counter() - started


if __name__ == "__main__":
    main()
