"""`polybridge sim dropcopy`: serve the simulated exchange DropCopy API until SIGTERM / SIGINT.

Prints one start line (`dropcopy simulator listening address=... token_url=... [ca_file=...]
[client_id=... client_key=...] audience=...`) for scripts to parse; with
`--ground-truth-out`, writes every journal record as JSON lines on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
from pathlib import Path

import grpc

from bridge.sim.contract import CONTRACTS
from bridge.sim.dropcopy import DropCopySimulator
from bridge.sim.dropcopy.config import SimConfig
from bridge.sim.dropcopy.faults import TOKEN_REFUSED_CODES, Faults
from bridge.sim.tokens import DEFAULT_API_AUDIENCE, ClientRegistration

log = logging.getLogger(__name__)


def _parse_client(value: str) -> tuple[str, Path]:
    client_id, sep, path = value.partition("=")
    if not sep or not client_id or not path:
        raise argparse.ArgumentTypeError("expected CLIENT_ID=PUBLIC_KEY_PEM_PATH")
    return client_id, Path(path)


def _parse_window(value: str) -> tuple[float, float]:
    start, sep, end = value.partition("/")
    try:
        window = tuple(
            (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
            for moment in (dt.datetime.fromisoformat(t.strip()) for t in (start, end))
        )
    except ValueError:
        window = ()
    if not sep or len(window) != 2 or window[1] <= window[0]:
        raise argparse.ArgumentTypeError("expected START/END, ISO-8601 times, END after START")
    return window[0], window[1]


class SimDropCopyCommand:
    """`polybridge sim dropcopy`: serve the simulator until SIGTERM / SIGINT."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
        add("--port", type=int, default=0, help="gRPC port (0 = pick a free one)")
        add("--seed", type=int, default=0, help="market generator seed")
        add("--rate", type=float, default=50.0, help="records/s generated live (0 = none)")
        add("--prefill", type=int, default=0, help="records generated before serving")
        add("--max-records", type=int, default=None, help="stop generating after N records")
        add("--batch", type=int, default=100, help="max records per response")
        add("--heartbeat", type=float, default=1.0, help="seconds idle before a heartbeat")
        add("--tls", action="store_true", help="serve TLS with a generated CA")
        add(
            "--tls-dir",
            "--files-dir",
            dest="files_dir",
            type=Path,
            default=None,
            help="directory for TLS files and generated client keys (default: temp dir)",
        )
        add("--no-auth", action="store_true", help="accept calls without access tokens")
        add("--audience", default=DEFAULT_API_AUDIENCE, help="API audience of access tokens")
        add("--token-lifetime", type=int, default=180, help="access token lifetime, seconds")
        add("--token-port", type=int, default=0, help="token endpoint port (0 = free one)")
        add(
            "--client",
            action="append",
            type=_parse_client,
            default=[],
            help="CLIENT_ID=PUBLIC_KEY_PEM_PATH allowed at the token endpoint (repeatable); "
            "without any, a client 'sim-client' with a generated key is registered",
        )
        add("--retention-records", type=int, default=None, help="journal records kept/stream")
        add("--retention-age", type=float, default=None, help="journal age kept, seconds")
        add(
            "--token-refused-code",
            choices=sorted(TOKEN_REFUSED_CODES),
            default="FAILED_PRECONDITION",
            help="status for an expired / unretained token",
        )
        add("--token-max-age", type=float, default=None, help="resume tokens expire after s")
        add("--drop-after", type=int, default=None, help="abort calls after N responses")
        add("--fail-next", type=int, default=0, help="the first K calls fail immediately")
        add(
            "--fail-code",
            choices=["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            default="UNAVAILABLE",
            help="status of --fail-next failures",
        )
        add(
            "--duplicate-probability",
            type=float,
            default=0.0,
            help="chance a response re-sends the previous response's last records",
        )
        add("--duplicate-every", type=int, default=None, help="every Nth response re-sends")
        add(
            "--resume-overlap",
            type=int,
            default=0,
            help="records before the token re-sent on a resumed call",
        )
        add(
            "--idle-disconnect",
            type=float,
            default=None,
            help="close with UNAVAILABLE after s without data records",
        )
        add(
            "--silent-after",
            type=int,
            default=None,
            help="calls go silent (open, no responses, no heartbeats) after N responses",
        )
        add(
            "--maintenance",
            action="append",
            type=_parse_window,
            default=[],
            help="START/END (ISO-8601 times): refuse calls during this maintenance window "
            "(repeatable)",
        )
        add(
            "--maintenance-code",
            choices=sorted(c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK),
            default="UNAVAILABLE",
            help="status of maintenance refusals",
        )
        add(
            "--contract",
            choices=CONTRACTS,
            default="current",
            help="wire contract: current (proto/ as compiled) or newer (with the fields the "
            "exchange added since; see bridge/sim/contract.py)",
        )
        add(
            "--ground-truth-out",
            type=Path,
            default=None,
            help="write every journal record as JSON lines to FILE on exit",
        )

    def run(self, args: argparse.Namespace) -> int:
        clients = tuple(
            ClientRegistration(client_id, path.read_bytes()) for client_id, path in args.client
        )
        faults = Faults(
            drop_after_responses=args.drop_after,
            fail_next_calls=args.fail_next,
            fail_code=grpc.StatusCode[args.fail_code],
            token_max_age_s=args.token_max_age,
            token_refused_code=TOKEN_REFUSED_CODES[args.token_refused_code],
            duplicate_probability=args.duplicate_probability,
            duplicate_every=args.duplicate_every,
            resume_overlap=args.resume_overlap,
            idle_disconnect_s=args.idle_disconnect,
            silent_after_responses=args.silent_after,
            maintenance=tuple(args.maintenance),
            maintenance_code=grpc.StatusCode[args.maintenance_code],
        )
        config = SimConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            rate=args.rate,
            prefill=args.prefill,
            max_records=args.max_records,
            batch=args.batch,
            heartbeat_s=args.heartbeat,
            tls=args.tls,
            files_dir=args.files_dir,
            auth=not args.no_auth,
            api_audience=args.audience,
            token_lifetime_s=args.token_lifetime,
            token_port=args.token_port,
            clients=clients,
            retention_records=args.retention_records,
            retention_age_s=args.retention_age,
            faults=faults,
            contract=args.contract,
        )
        return asyncio.run(self._serve(config, args.ground_truth_out))

    async def _serve(self, config: SimConfig, ground_truth_out: Path | None) -> int:
        sim = DropCopySimulator(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await sim.start()
        try:
            fields = [f"address={sim.address}", f"token_url={sim.token_url}"]
            if sim.ca_path is not None:
                fields.append(f"ca_file={sim.ca_path}")
            if config.auth and not config.clients:
                fields += ["client_id=sim-client", f"client_key={sim.create_client()}"]
            fields.append(f"audience={config.api_audience}")
            print("dropcopy simulator listening " + " ".join(fields), flush=True)
            await stop.wait()
        finally:
            if ground_truth_out is not None:
                count = sim.write_ground_truth(ground_truth_out)
                log.info("ground truth written path=%s records=%d", ground_truth_out, count)
            await sim.stop()
        return 0


def command(path: tuple[str, ...]) -> SimDropCopyCommand:
    """Entry point used by `bridge.cli`."""
    del path
    return SimDropCopyCommand()
