"""Generate `polymarket/v1/*_pb2*.py(i)` from `proto/` (run by `make proto`).

The generated modules are committed so that `pip install` needs no protoc; the test
`tests/unit/test_proto_generated.py` regenerates into a temporary folder and fails when the
committed files drift from `proto/`.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Write the Python modules for every `.proto` under `proto/` into `out_dir`."""
    sources = sorted(PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes a gRPC module for every file; only files that declare a service need one.
    for source in sources:
        if "\nservice " not in source.read_text():
            grpc_module = out_dir / source.relative_to(PROTO_ROOT).with_name(
                source.stem + "_pb2_grpc.py"
            )
            grpc_module.unlink()
    return sorted(p for p in out_dir.rglob("*_pb2*.py*"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path.relative_to(out))
