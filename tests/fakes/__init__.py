"""Fake model servers speaking the real Gemini and OpenAI wire formats."""

from tests.fakes._common import FakeServer, Fault, Reply, Req
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI

__all__ = ["FakeGemini", "FakeOpenAI", "FakeServer", "Fault", "Reply", "Req"]
