"""The generated section of docs/performance.md replaces only itself."""

from __future__ import annotations

from pathlib import Path

from bench import report


def test_section_goes_under_the_title_and_keeps_the_history(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Sub-call fan-out\n\nold figures\n")
    report.write(doc, f"{report.BEGIN}\nfirst\n{report.END}\n")
    text = doc.read_text()
    assert text.startswith(f"# Performance\n\n{report.BEGIN}\nfirst\n")
    assert text.endswith("## Sub-call fan-out\n\nold figures\n")

    report.write(doc, f"{report.BEGIN}\nsecond\n{report.END}\n")
    text = doc.read_text()
    assert "first" not in text and text.count(report.BEGIN) == 1
    assert "second" in text and "old figures" in text


def test_a_missing_file_gets_a_title(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    report.write(doc, f"{report.BEGIN}\nx\n{report.END}\n")
    assert doc.read_text().startswith("# Performance\n")
