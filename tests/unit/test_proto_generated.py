"""The committed `polymarket/v1` modules are exactly what `proto/` generates."""

from __future__ import annotations

from pathlib import Path

from tools.gen_proto import ROOT, generate


def test_committed_modules_match_proto_sources(tmp_path: Path) -> None:
    generated = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed = {
        p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "polymarket" / "v1").glob("*_pb2*.py*")
    }
    assert generated.keys() == committed.keys(), "run `make proto` and commit the result"
    drifted = sorted(str(name) for name in generated if generated[name] != committed[name])
    assert not drifted, f"out of date with proto/: {drifted}; run `make proto` and commit"


def test_modules_import_as_the_exchange_documents() -> None:
    from polymarket.v1 import dropcopy_pb2, dropcopy_pb2_grpc, enums_pb2

    assert dropcopy_pb2.DESCRIPTOR.package == "polymarket.v1"
    assert hasattr(dropcopy_pb2_grpc, "DropCopyAPIStub")
    assert enums_pb2.ExecutionType.Name(2) == "EXECUTION_TYPE_FILL"
    service = dropcopy_pb2.DESCRIPTOR.services_by_name["DropCopyAPI"]
    assert [m.name for m in service.methods] == [
        "CreateDropCopySubscription",
        "CreateTradeCaptureReportSubscription",
        "CreateInstrumentStateChangeSubscription",
        "CreatePositionChangeSubscription",
    ]
    assert all(m.server_streaming for m in service.methods)
