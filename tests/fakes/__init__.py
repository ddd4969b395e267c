"""Fake model servers speaking the real Gemini and OpenAI wire formats."""

from tests.fakes._common import Fault, FakeServer, Reply, Req
from tests.fakes.gemini import FakeGemini

__all__ = ["Fault", "FakeGemini", "FakeServer", "Reply", "Req"]
