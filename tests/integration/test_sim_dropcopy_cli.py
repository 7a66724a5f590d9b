"""`polybridge sim dropcopy` as a process: start line, TLS + OAuth, SIGTERM, ground truth."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bridge.sources.auth import PrivateKeyJwtProvider
from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc, trading_pb2
from tests.bridge_harness import run_within


def test_cli_serves_tls_with_oauth_and_exports_ground_truth(tmp_path: Path) -> None:
    truth_file = tmp_path / "truth.jsonl"
    command = [sys.executable, "-m", "bridge.cli", "--log-level=WARNING", "sim", "dropcopy"]
    command += ["--port", "0", "--prefill", "800", "--rate", "0", "--heartbeat", "0.05"]
    command += ["--tls", "--tls-dir", str(tmp_path), "--ground-truth-out", str(truth_file)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        assert line.startswith("dropcopy simulator listening")
        assert Path(fields["ca_file"]).is_file() and fields["token_url"].startswith("https://")

        async def client() -> list[str]:
            provider = PrivateKeyJwtProvider(
                fields["client_id"],
                private_key_path=fields["client_key"],
                token_url=fields["token_url"],
                audience=fields["audience"],
                ca_file=fields["ca_file"],
            )
            token = await provider.token()
            credentials = grpc.ssl_channel_credentials(Path(fields["ca_file"]).read_bytes())
            port = fields["address"].rsplit(":", 1)[1]
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                call = dropcopy_pb2_grpc.DropCopyAPIStub(channel).CreateDropCopySubscription(
                    dropcopy_pb2.CreateDropCopySubscriptionRequest(
                        resume_time=Timestamp(seconds=0), firms=["firms/acme-capital"]
                    ),
                    metadata=[
                        ("authorization", f"Bearer {token}"),
                        ("x-participant-id", "firms/acme-capital/users/alice"),
                    ],
                )
                ids: list[str] = []
                while True:
                    response = await call.read()
                    if not response.executions:
                        call.cancel()
                        return ids
                    ids += [e.id for e in response.executions]

        received = run_within(client, 20)
        assert received
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    lines = [json.loads(line) for line in truth_file.read_text().splitlines()]
    executions = [
        trading_pb2.Execution.FromString(base64.b64decode(line["record"]))
        for line in lines
        if line["stream"] == "executions"
    ]
    acme = [e.id for e in executions if e.order.account.startswith("firms/acme-capital/")]
    assert acme == received
    assert {line["stream"] for line in lines} == {
        "executions",
        "trade_captures",
        "instrument_states",
        "position_changes",
    }
