"""The committed protobuf/gRPC code matches what `make proto` generates now."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "_gen"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(out)],
                   check=True, capture_output=True)
    committed = ROOT / "rlm_service" / "_gen"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    have = sorted(p.relative_to(committed) for p in committed.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == have, "generated files differ: run `make proto` and commit"
    stale = [str(p) for p in fresh if not filecmp.cmp(out / p, committed / p, shallow=False)]
    assert not stale, f"stale generated code, run `make proto`: {stale}"


def test_generated_code_is_not_a_top_level_rlm_package() -> None:
    # Sources and stubs only: __pycache__ holds bytecode once anything imported them.
    for path in (ROOT / "rlm_service" / "_gen").rglob("*.py*"):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        assert "from rlm." not in text and "import rlm." not in text, path
