"""Client code written the way the exchange documents it works against the simulator.

The client below uses `grpc.ssl_channel_credentials()` with no arguments (system roots), a
bearer token in metadata and `enums_pb2.ExecutionType.Name`. It runs in a subprocess that
trusts the simulator's test CA only through gRPC's standard root-certificate setting,
`GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bridge.sim.dropcopy import SimConfig, SimulatorThread

DOCUMENTED_CLIENT = textwrap.dedent(
    """
    import os

    import grpc

    from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc, enums_pb2

    GRPC_ENDPOINT = os.environ["POLYMARKET_GRPC_ENDPOINT"]
    ACCESS_TOKEN = os.environ["POLYMARKET_ACCESS_TOKEN"]
    PARTICIPANT_ID = os.environ["POLYMARKET_PARTICIPANT_ID"]
    STOP_AFTER = int(os.environ.get("STOP_AFTER", "20"))  # examples loop forever


    def main():
        credentials = grpc.ssl_channel_credentials()
        channel = grpc.secure_channel(GRPC_ENDPOINT, credentials)
        stub = dropcopy_pb2_grpc.DropCopyAPIStub(channel)
        metadata = [
            ("authorization", f"Bearer {ACCESS_TOKEN}"),
            ("x-participant-id", PARTICIPANT_ID),
        ]
        request = dropcopy_pb2.CreateDropCopySubscriptionRequest()
        seen = 0
        for response in stub.CreateDropCopySubscription(request, metadata=metadata):
            for execution in response.executions:
                print(f"Execution: {execution.id}")
                print(f"  Type: {enums_pb2.ExecutionType.Name(execution.type)}")
                print(f"  Symbol: {execution.order.symbol}")
                print(f"  Fill Price: {execution.last_px}")
                seen += 1
            if seen >= STOP_AFTER:
                break
        channel.close()


    if __name__ == "__main__":
        main()
    """
)


def test_documented_client_streams_executions_over_tls(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(DOCUMENTED_CLIENT)
    config = SimConfig(tls=True, files_dir=tmp_path / "sim", rate=2000.0, heartbeat_s=0.2)
    with SimulatorThread(config) as sim:
        assert sim.ca_path is not None
        env = {
            **os.environ,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(sim.ca_path),
            "POLYMARKET_GRPC_ENDPOINT": f"localhost:{sim.port}",
            "POLYMARKET_ACCESS_TOKEN": sim.issue_token(["read:dropcopy"]),
            "POLYMARKET_PARTICIPANT_ID": "firms/acme-capital/users/alice",
        }
        result = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        truth = {e.id: e for e in sim.ground_truth("executions", firms=["firms/acme-capital"])}
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ids = [line.split(": ", 1)[1] for line in lines if line.startswith("Execution: ")]
    types = [line.split(": ", 1)[1] for line in lines if line.startswith("  Type: ")]
    assert len(ids) >= 20
    assert all(i in truth for i in ids)
    assert all(t.startswith("EXECUTION_TYPE_") for t in types)
    assert "EXECUTION_TYPE_NEW" in types
