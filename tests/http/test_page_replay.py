"""The progress page replaying saved runs with no server, and its event parsers, in
real headless Chromium (Debian's) driven by Playwright from PyPI."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path

import aiohttp
from playwright.async_api import Request, expect

from rlm_service.server import Server
from tests.conftest import StartServer, repl
from tests.fakes.gemini import FakeGemini
from tests.http.conftest import Browser, needs_chromium, page_url

pytestmark = needs_chromium


async def save_with_rlm(server: Server, prompt: str, path: Path) -> None:
    """A real ``rlm run --save`` over gRPC (snake_case proto field names)."""
    rlm = Path(sys.executable).with_name("rlm")
    proc = await asyncio.create_subprocess_exec(
        str(rlm), "run", prompt, "--server", f"127.0.0.1:{server.port}", "--plain",
        "--save", str(path), "--max-depth", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()


async def test_replays_a_saved_run_without_the_server(
        server: Server, fake_gemini: FakeGemini, browser: Browser, tmp_path: Path) -> None:
    fake_gemini.script("MARK-SAVED", [
        repl("print(llm_query('a sub question'))\nprint(rlm_query('MARK-KID go'))"),
        repl("FINAL('answer from the saved run')")])
    fake_gemini.script("MARK-KID", [repl("FINAL('kid done')")])
    saved = tmp_path / "run.jsonl"
    await save_with_rlm(server, "MARK-SAVED please", saved)
    assert '"sub_call_finished"' in saved.read_text()  # the CLI's snake_case spelling

    page = browser.page
    await page.goto(page_url(server))
    # From here on the page may not reach any server.
    blocked: list[Request] = []
    await page.route("**/*", lambda route: (blocked.append(route.request), route.abort()))
    await server.stop(grace=0)

    await page.get_by_label("Replay a saved run").set_input_files(saved)
    answer = page.get_by_role("region", name="Answer")
    await expect(answer).to_contain_text("answer from the saved run")
    await expect(page.locator("#state")).to_have_text("answered")
    await expect(page.locator("#replay-info")).to_contain_text("run.jsonl: ")
    await expect(page.locator("#iterations > li.iteration")).to_have_count(2)
    await expect(page.get_by_label("Output").first).to_contain_text("kid done")
    await expect(page.locator("#tree .node")).to_have_count(2)
    await expect(page.locator("#tree-summary")).to_contain_text("1 llm_query, 1 rlm_query")
    elapsed = float((await page.locator("#elapsed").inner_text()).split()[0])
    assert elapsed > 0
    tokens = await page.locator("#tokens").inner_text()

    # The page's own export replays to the same view.
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Export run").click()
    exported = Path(await (await download_info.value).path())
    assert '"subCallFinished"' in exported.read_text()  # the page's own (SSE) spelling
    await page.get_by_label("Replay a saved run").set_input_files(exported)
    await expect(page.locator("#replay-info")).to_contain_text(exported.name)
    await expect(answer).to_contain_text("answer from the saved run")
    await expect(page.locator("#tree .node")).to_have_count(2)
    await expect(page.locator("#tokens")).to_have_text(tokens)
    await expect(page.locator("#iterations > li.iteration")).to_have_count(2)
    assert blocked == []
    assert browser.errors == []


async def test_event_parsing_in_the_browser(start_server: StartServer, fake_gemini: FakeGemini,
                                            browser: Browser) -> None:
    server = await start_server(heartbeat_seconds=0.1)
    fake_gemini.script("MARK-PARSE", [
        repl("import time\ntime.sleep(0.3)\nprint(llm_query('x'))"), repl("FINAL('parsed')")])
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{server.http_port}/v1/completions:stream",
            json={"prompt": "MARK-PARSE"}) as response:
        sse = await response.text()
    frames = sse.count("\ndata: ") + sse.startswith("data: ")
    assert ": heartbeat" in sse and frames >= 6
    page = browser.page
    await page.goto(page_url(server))
    # The SSE parser gives the same events however the bytes are split.
    result = await page.evaluate("""async (text) => {
        const { SseParser } = await import("/static/events.js");
        const split = (size) => { const p = new SseParser(); const out = [];
          for (let i = 0; i < text.length; i += size) out.push(...p.feed(text.slice(i, i + size)));
          return JSON.stringify(out); };
        return { whole: split(text.length), sizes: [1, 7, 64, 1000].map(split) };
    }""", sse)
    events = json.loads(result["whole"])
    assert len(events) == frames and events[-1]["finalAnswer"]["answer"] == "parsed"
    # Heartbeats (comments) take seq numbers too, so data frames only increase.
    assert all(int(a["seq"]) < int(b["seq"]) for a, b in itertools.pairwise(events))
    assert result["sizes"] == [result["whole"]] * 4

    # A saved file out of order, with a torn line and the seq-less status line
    # `rlm` appends when a call ends without an error event.
    lines = [
        '{"seq": "2", "root_turn": {"iteration": 1, "text": "hi"}}',
        '{"seq": "1", "run_started": {"request_id": "r1", "context_chars": "5"}}',
        '{"error": {"code": "CANCELLED", "message": "cancelled with Ctrl-C"}}',
        '{"seq": "3", "code_bl',
    ]
    saved = await page.evaluate("""async (text) => {
        const { parseSaved } = await import("/static/events.js");
        return parseSaved(text);
    }""", "\n".join(lines))
    assert saved["skipped"] == 1
    assert [next(iter(set(e) - {"seq"})) for e in saved["events"]] == [
        "runStarted", "rootTurn", "error"]
    assert saved["events"][0]["runStarted"] == {"requestId": "r1", "contextChars": "5"}
    await page.get_by_label("Replay a saved run").set_input_files(files=[{
        "name": "cancelled.jsonl", "mimeType": "application/json",
        "buffer": "\n".join(lines).encode()}])
    await expect(page.locator("#state")).to_have_text("cancelled")
    await expect(page.locator("#stop-reason")).to_have_text("error: CANCELLED")
    await expect(page.locator("#replay-info")).to_have_text(
        "cancelled.jsonl: 3 events, 1 unreadable line skipped")
    assert browser.errors == []


async def test_a_rejected_request_shows_the_servers_error(server: Server,
                                                          browser: Browser) -> None:
    page = browser.page
    await page.goto(page_url(server))
    await page.get_by_label("Prompt").fill("anything")
    await page.get_by_label("Max iterations").fill("1000000000000")
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(page.locator("#state")).to_have_text("rejected")
    await expect(page.get_by_role("region", name="Answer")).to_contain_text("Error 400: ")
    # An empty prompt never leaves the page.
    requests = len(browser.requests)
    await page.get_by_label("Prompt").fill("  ")
    await page.get_by_label("Prompt").press("Control+Enter")
    await expect(page.get_by_label("Prompt")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Prompt")).to_be_focused()
    assert len(browser.requests) == requests
    # The 400 is reported by Chromium's console; nothing else may be.
    assert [e for e in browser.errors if "400" not in e] == []
