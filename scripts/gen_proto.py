"""Generate the protobuf/gRPC Python code into rlm_service/_gen.

protoc names Python modules after the proto package (``rlm.v1``), which would
make a top-level ``rlm`` package; that name belongs to the reference library
``rlms``, so the imports are rewritten under ``rlm_service._gen``.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: rlm_service/_gen)
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
BIN = Path(sys.executable).parent
PREFIX = "rlm_service._gen"


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "__init__.py").write_text('"""Generated protobuf/gRPC code. Do not edit."""\n')
        pattern = re.compile(r"^(from|import) rlm\.", re.MULTILINE)
        for src in sorted(Path(tmp).rglob("*")):
            rel = src.relative_to(tmp)
            dst = out_dir / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                (dst / "__init__.py").write_text("")
                continue
            text = pattern.sub(lambda m: f"{m.group(1)} {PREFIX}.rlm.", src.read_text())
            dst.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "rlm_service" / "_gen")
