"""The progress page in real headless Chromium (Debian's) during live runs, against the
real server and the fake Gemini API, driven by Playwright from PyPI."""

from __future__ import annotations

import re
import statistics
import time

from playwright.async_api import expect

from rlm_service.auth import digest_of
from tests.conftest import SUB_MODEL, StartServer, busy_repl_pids, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.http.conftest import ARTIFACTS, Browser, needs_chromium, page_url
from tests.support.procs import is_alive as alive
from tests.support.procs import settled as wait_for

pytestmark = needs_chromium


async def test_a_run_from_the_page_shows_iterations_tree_and_answer(
        start_server: StartServer, fake_gemini: FakeGemini, browser: Browser) -> None:
    # Priced, so the cost meter has something to show (USD per 1M tokens).
    server = await start_server(model_prices_json={"fake-": {"input": 1.0, "output": 4.0}})
    fake_gemini.script("MARK-PAGE", [
        repl("# two plain sub-calls and one child run\n"
             "answers = llm_query_batched(['first question', 'second question'])\n"
             "child = rlm_query('MARK-CHILD summarise', context='child data')\n"
             "print(len(answers), child)"),
        repl("FINAL('the page answer: ' + str(len(context)))")])
    fake_gemini.script("MARK-CHILD", [repl("FINAL('child says hi')")])
    page = browser.page
    await page.goto(page_url(server))
    await page.get_by_label("Prompt").fill("MARK-PAGE count the words")
    await page.get_by_label("Context", exact=True).fill("one two three")
    await page.get_by_label("Max depth").fill("2")
    await page.get_by_role("button", name="Run", exact=True).click()

    answer = page.get_by_role("region", name="Answer")
    await expect(answer).to_contain_text("the page answer: 13")
    await expect(page.locator("#state")).to_have_text("answered")
    await expect(page.locator("#stop-reason")).to_have_text("answered")
    iterations = page.locator("#iterations > li.iteration")
    await expect(iterations).to_have_count(2)
    first = iterations.nth(0)
    await expect(first.locator("h3")).to_have_text("Iteration 1")
    # The reply's text, its code block folded away: it is shown highlighted below.
    await expect(first.locator(".model-text")).to_have_text(
        "Let me run this.\n[code block 1, below]")
    # The code is highlighted (Prism tokens), its output shown beside it.
    code = first.get_by_label("Code, iteration 1, block 1")
    await expect(code.locator(".token.comment")).to_have_text(
        "# two plain sub-calls and one child run")
    await expect(code.locator(".token.string").first).to_have_text("'first question'")
    await expect(first.get_by_label("Output")).to_have_text("2 child says hi")

    tree = page.get_by_label("Sub-call tree")
    nodes = tree.locator(".node")
    await expect(nodes).to_have_count(3)
    await expect(tree.locator('.node[data-state="ok"]')).to_have_count(3)
    await expect(tree.locator(".kind", has_text="llm_query")).to_have_count(2)
    rlm = tree.locator(".node", has=page.locator(".kind.rlm"))
    await expect(rlm).to_contain_text("rlm_query")
    await expect(rlm).to_contain_text("depth 1")
    await expect(rlm).to_contain_text("1 iteration")
    # The child run's own turns count towards its rlm_query node.
    child_tokens = re.search(r"(\d+) tok", await rlm.locator(".facts").inner_text())
    assert child_tokens and int(child_tokens[1]) > 0
    await expect(page.locator("#tree-summary")).to_contain_text(
        "3 sub-calls (0 running, 3 ok, 0 failed) · depth 1: 2 llm_query, 1 rlm_query")
    tokens = int((await page.locator("#tokens").inner_text()).replace(",", ""))
    assert tokens > 0
    assert (await page.locator("#calls").inner_text()) == "5"  # 2 root + 2 llm + 1 child turn
    assert float((await page.locator("#elapsed").inner_text()).split()[0]) > 0
    cost = float((await page.locator("#cost").inner_text()).lstrip("$"))
    assert 0 < cost < 0.1
    await expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    await expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "page-run.png", full_page=True)
    assert browser.errors == []


async def test_stop_cancels_the_run_on_the_server(start_server: StartServer,
                                                  fake_gemini: FakeGemini,
                                                  browser: Browser) -> None:
    server = await start_server()
    fake_gemini.script("MARK-SLOW", [repl("import time\ntime.sleep(60)\nFINAL('too late')")])
    page = browser.page
    await page.goto(page_url(server))
    # Keyboard only: type the prompt, Ctrl+Enter runs, Escape stops.
    await page.get_by_label("Prompt").focus()
    await page.keyboard.type("MARK-SLOW take your time")
    await page.keyboard.press("Control+Enter")
    await expect(page.locator("#iterations > li.iteration")).to_have_count(1)
    await expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled()
    # The run's REPL (and its children), not the pool's idle ones.
    assert await wait_for(lambda: bool(busy_repl_pids(server)), 10.0), "no REPL ever ran"
    running = busy_repl_pids(server)

    await page.keyboard.press("Escape")
    stopped = time.monotonic()
    await expect(page.locator("#state")).to_have_text("stopped")
    await expect(page.locator("#stop-reason")).to_have_text("cancelled (Stop)")
    assert await wait_for(lambda: not any(alive(p) for p in running), 2.0), \
        [p for p in running if alive(p)]
    assert time.monotonic() - stopped < 2.0
    engine = server.engine
    assert engine is not None
    assert await wait_for(lambda: not engine.active, 2.0)
    assert busy_repl_pids(server) == set()
    await expect(page.get_by_role("region", name="Answer")).not_to_contain_text("too late")
    await expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    assert browser.errors == []


async def test_stays_responsive_with_1000_sub_calls(start_server: StartServer,
                                                    fake_gemini: FakeGemini,
                                                    browser: Browser) -> None:
    # 1,002 model calls: past the shipped default ceiling of 1,000 a request.
    server = await start_server(batch_concurrency=64, default_max_llm_calls=2000)
    # A few sub-calls fail (a 400 is not retried): they show as failed, the run goes on.
    fake_gemini.inject(Fault.BAD_REQUEST_400, count=5, model=SUB_MODEL)
    fake_gemini.script("MARK-WIDE", [
        repl("r = llm_query_batched([f'item {i}' for i in range(1000)])\nprint(len(r))"),
        repl("FINAL('wide done')")])
    page = browser.page
    await page.goto(page_url(server))
    # Measured inside the page, since this test's own event loop is busy serving
    # the run: long tasks (>50 ms of main-thread work), how late a 20 ms timer
    # fires, and how long a real key press waits before its handler runs.
    await page.evaluate("""() => {
        const probe = window.probe = { longTasks: [], lags: [], keyDelays: [] };
        new PerformanceObserver((list) => { for (const e of list.getEntries())
          probe.longTasks.push(e.duration); }).observe({ type: "longtask" });
        let last = performance.now();
        const tick = () => { const now = performance.now(); probe.lags.push(now - last - 20);
          last = now; setTimeout(tick, 20); };
        setTimeout(tick, 20);
        document.getElementById("max_cost_usd").addEventListener("keydown",
          (e) => probe.keyDelays.push(performance.now() - e.timeStamp));
    }""")
    await page.get_by_label("Prompt").fill("MARK-WIDE fan out")
    await page.get_by_role("button", name="Run", exact=True).click()
    box = page.get_by_label("Max cost (USD)")
    await box.focus()
    while not (await page.evaluate("window.rlmPage.stats()"))["done"]:
        await page.keyboard.press("1")
        await page.keyboard.press("Backspace")
    await expect(page.get_by_role("region", name="Answer")).to_contain_text("wide done")
    await expect(page.locator("#tree .node")).to_have_count(1000)
    await expect(page.locator('#tree .node[data-state="ok"]')).to_have_count(995)
    failed = page.locator('#tree .node[data-state="error"]')
    await expect(failed).to_have_count(5)
    await expect(failed.first.locator(".error-message")).to_contain_text("invalid argument")
    await expect(page.locator("#tree-summary")).to_contain_text(
        "1000 sub-calls (0 running, 995 ok, 5 failed) · depth 1: 1000 llm_query, 0 rlm_query")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "page-1000-sub-calls.png")
    probe = await page.evaluate("window.probe")
    lags, keys, tasks = probe["lags"], probe["keyDelays"], probe["longTasks"]
    print(f"\n1000 sub-calls: {len(probe['lags'])} timer ticks, lag p50 "
          f"{statistics.median(lags):.0f} ms max {max(lags):.0f} ms; {len(keys)} key presses, "
          f"delay max {max(keys, default=0):.0f} ms; {len(tasks)} long tasks, longest "
          f"{max(tasks, default=0):.0f} ms")
    assert len(lags) >= 10 and keys, "the run finished before the page could be probed"
    # Generous bounds, for a shared test machine: a page that laid out each event
    # on its own, or applied a whole burst in one task, stalls for seconds.
    assert statistics.median(lags) < 50, lags
    assert max(lags) < 1000 and max(keys) < 1000, (lags, keys)
    assert max(tasks, default=0) < 1000, tasks
    assert browser.errors == []


async def test_api_key_field_reaches_a_service_that_asks_for_one(
        start_server: StartServer, fake_gemini: FakeGemini, browser: Browser) -> None:
    key = "page-test-key-7f3a"
    server = await start_server(api_keys=f"page:{digest_of(key)}")
    fake_gemini.script("MARK-KEYED", [repl("FINAL('keyed ' + str(len(context)))")])
    page = browser.page
    await page.goto(page_url(server))
    await page.get_by_label("Prompt").fill("MARK-KEYED go")
    await page.get_by_label("Context", exact=True).fill("abc")
    await page.get_by_role("button", name="Run", exact=True).click()
    answer = page.get_by_role("region", name="Answer")
    await expect(answer).to_contain_text("Error 401")
    await page.get_by_label("API key (when the service asks for one)").fill("wrong-key")
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(answer).to_contain_text("Error 403")
    await page.get_by_label("API key (when the service asks for one)").fill(key)
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(answer).to_contain_text("keyed 3")
