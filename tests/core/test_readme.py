"""The README's settings table names every setting the service reads."""

from __future__ import annotations

from pathlib import Path

from rlm_service.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in README]
    assert not missing, f"settings missing from README.md: {missing}"


def test_readme_shows_the_two_commands_and_grpcurl() -> None:
    assert "make run" in README and "make test" in README
    assert "grpcurl -plaintext" in README and "rlm.v1.RLMService/StreamCompletion" in README
