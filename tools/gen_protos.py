"""Regenerates the Python code and type stubs for every contract under protos/ into gen/ (`make protos`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    # Start from nothing so a deleted or renamed contract leaves no stale module behind.
    shutil.rmtree(OUT / "metermesh", ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    # The mypy-protobuf plugins are installed beside this interpreter, which may not be on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    # Regular packages (not namespace packages) so the editable install and mypy both find them.
    for d in [OUT / "metermesh", *(p for p in (OUT / "metermesh").rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    (OUT / "metermesh" / "py.typed").touch()
    print(f"generated {len(protos)} contracts into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
