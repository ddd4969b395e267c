"""Google-signed ID tokens as credentials, against a local stand-in for Google's
certificate endpoint and tokens signed with a key made for the test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import repl
from tests.fakes.gemini import FakeGemini

AUDIENCE = "https://rlm.example.run.app"


def _key() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pem, public


GOOGLE_KEY, GOOGLE_PUBLIC = _key()
OTHER_KEY, _ = _key()


def token(signing_key: bytes = GOOGLE_KEY, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now,
               "exp": now + 600, "sub": "1234", "email": "ci@proj.iam.gserviceaccount.com",
               "email_verified": True, **claims}
    signer = crypt.RSASigner.from_string(signing_key, key_id="k1")
    return jwt.encode(signer, payload).decode()  # type: ignore[no-any-return]


@pytest.fixture
async def certs_url() -> AsyncIterator[str]:
    app = web.Application()

    async def certs(request: web.Request) -> web.Response:
        return web.json_response({"k1": GOOGLE_PUBLIC})

    app.router.add_get("/oauth2/v1/certs", certs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/oauth2/v1/certs"
    finally:
        await runner.cleanup()


@pytest.fixture
async def google_server(start_server, certs_url: str) -> Server:
    server: Server = await start_server(
        google_id_token_audience=AUDIENCE, google_id_token_certs_url=certs_url,
        google_id_token_emails="ci@proj.iam.gserviceaccount.com")
    return server


async def _complete(server: Server, bearer: str) -> grpc.aio.AioRpcError | str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            response = await rlm_pb2_grpc.RLMServiceStub(channel).Complete(
                make_request("MARK-GOOGLE", "c"),
                metadata=(("authorization", f"Bearer {bearer}"),), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc
    return response.answer


async def test_a_google_id_token_is_accepted(google_server: Server,
                                             fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-GOOGLE", [repl("FINAL('hello, service account')")])
    assert await _complete(google_server, token()) == "hello, service account"
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{google_server.http_port}/completion",
            json={"prompt": "MARK-GOOGLE", "context": "c"},
            headers={"Authorization": f"Bearer {token()}"}) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(("claims", "signing_key", "needle"), [
    ({"aud": "https://someone-else.run.app"}, GOOGLE_KEY, "not valid"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, GOOGLE_KEY, "not valid"),
    ({"iss": "https://evil.example"}, GOOGLE_KEY, "not issued by Google"),
    ({"email": "intruder@gmail.com"}, GOOGLE_KEY, "may not call"),
    ({"email_verified": False}, GOOGLE_KEY, "may not call"),
    ({}, OTHER_KEY, "not valid"),
])
async def test_bad_tokens_are_permission_denied(google_server: Server, fake_gemini: FakeGemini,
                                                claims: dict[str, Any], signing_key: bytes,
                                                needle: str) -> None:
    result = await _complete(google_server, token(signing_key, **claims))
    assert isinstance(result, grpc.aio.AioRpcError)
    assert result.code() == grpc.StatusCode.PERMISSION_DENIED
    assert needle in (result.details() or ""), result.details()
    assert not fake_gemini.requests


async def test_no_token_is_unauthenticated(google_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{google_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rlm_pb2_grpc.RLMServiceStub(channel).Complete(make_request("q", "c"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
