"""``rlm run`` on a pseudo-terminal: the live view, replay of a saved run, Ctrl-C."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.clients.conftest import (
    LiveServer,
    finish,
    our_guests,
    plain,
    screen,
    spawn_rlm,
)
from tests.conftest import process_tree, repl

CHILD = "CHILD-MARK summarise the parts"
TRAJECTORY = [
    repl("print('scanning', len(context), 'chars')\n"
         "parts = llm_query_batched(['part a', 'part b', 'part c'])\n"
         "print('\\n'.join(parts))"),
    repl(f"child = rlm_query({CHILD!r})\nprint('child said', child)\n"
         "FINAL('the answer is 42')"),
]


def _script(server: LiveServer) -> None:
    server.fake.script("MARK-LIVE", TRAJECTORY)
    server.fake.script("CHILD-MARK", [repl("print('in the child')\nFINAL('child says hi')")])
    # Slow sub-calls, so frames are drawn while they are in flight.
    server.fake.model_latency["fake-sub"] = 0.5


def test_live_view_draws_every_part_and_ends_with_answer_and_summary(
        live_server: LiveServer) -> None:
    _script(live_server)
    child = spawn_rlm("run", "MARK-LIVE find the answer", "--server", live_server.address,
                      "--max-depth", "2", "--context-file", str(Path(__file__)))
    raw, code = finish(child)
    text = plain(raw)
    assert code == 0, text[-4000:]
    # The iteration, the code being run and, while it runs, the sub-calls in flight.
    assert "iteration 1 · running block 1/1" in text
    assert "llm_query_batched(['part a', 'part b', 'part c'])" in text
    assert "llm_query x3: 3 in flight, 0 done" in text
    assert "llm_query x3: 0 in flight, 3 done · avg 0.5" in text
    # The output tail, the tree by depth with the child run, and the depth table.
    assert "scanning" in text and "sub<6>:part a" in text
    assert "sub-calls" in text and "rlm_query 'CHILD-MARK summarise the parts'" in text
    assert "depth  in flight  done" in text
    assert "iteration 2 · running block 1/1" in text
    # Usage and elapsed time move while the run goes on.
    assert "· 0 model calls ·" in text and "s elapsed" in text
    elapsed = [float(part.split("s elapsed")[0].rsplit("· ", 1)[1])
               for part in text.split("\n") if "s elapsed" in part]
    assert max(elapsed) >= 0.5, elapsed
    # The last screen: the answer and the one-line summary.
    shown = screen(raw)
    assert any("the answer is 42" in line for line in shown), shown
    summary = shown[-1]
    assert summary.startswith("answered · 2 iterations · "), shown
    assert " tokens · $" in summary and summary.endswith("s")


def test_replay_of_a_saved_run_draws_the_same_last_screen(live_server: LiveServer,
                                                          tmp_path: Path) -> None:
    _script(live_server)
    saved = tmp_path / "run.jsonl"
    live = spawn_rlm("run", "MARK-LIVE again", "--server", live_server.address,
                     "--max-depth", "2", "--save", str(saved))
    live_raw, live_code = finish(live)
    replay_raw, replay_code = finish(spawn_rlm("replay", str(saved)))
    assert live_code == replay_code == 0
    live_screen, replay_screen = screen(live_raw), screen(replay_raw)
    # The replay draws only the last frame; the live run's screen ends with the same.
    assert len(replay_screen) > 10
    assert live_screen[-len(replay_screen):] == replay_screen


def _guest_running(marker: str) -> set[int]:
    """The REPL processes (guest and children) of ours whose tree runs ``marker``."""
    for pid in process_tree(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    return {pid, *_ancestor_guests(pid)}
        except OSError:
            continue
    return set()


def _ancestor_guests(pid: int) -> set[int]:
    guests, ours = set(), our_guests()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        if pid in ours:
            guests.add(pid)
    return guests


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_cancels_the_run_on_the_server(live_server: LiveServer) -> None:
    server = live_server
    marker = f"SLEEPER-{os.getpid()}-{time.monotonic_ns()}"
    # The block starts a process of its own, so the test can see the REPL's whole tree go.
    server.fake.script("MARK-CTRL-C", [repl(
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "print('started', flush=True)\np.wait()\nFINAL('not reached')")])
    child = spawn_rlm("run", "MARK-CTRL-C go", "--server", server.address)
    child.expect("running block 1/1", timeout=20)
    end = time.monotonic() + 10
    running: set[int] = set()
    while not running and time.monotonic() < end:
        running = _guest_running(marker)
        time.sleep(0.05)
    # The sleeper and at least the guest that started it.
    assert len(running) >= 2, f"the block's process tree never appeared: {running}"
    assert server.active_runs() == 1
    child.sendintr()
    raw, code = finish(child, timeout=10)
    assert code == 130, plain(raw)
    assert "rlm: cancelled" in plain(raw)
    end = time.monotonic() + 5
    while time.monotonic() < end and (server.active_runs() or any(map(_alive, running))):
        time.sleep(0.05)
    assert server.active_runs() == 0
    assert not [pid for pid in running if _alive(pid)], "REPL processes outlived the run"


def test_ctrl_c_before_anything_arrives_still_exits_130(live_server: LiveServer) -> None:
    server = live_server
    server.fake.model_latency["fake-root"] = 30.0
    child = spawn_rlm("run", "slow root", "--server", server.address)
    child.expect("starting", timeout=20)
    end = time.monotonic() + 10
    while not server.fake.in_flight and time.monotonic() < end:
        time.sleep(0.05)
    child.sendintr()
    raw, code = finish(child, timeout=10)
    assert code == 130, plain(raw)
    end = time.monotonic() + 5
    while time.monotonic() < end and (server.active_runs() or server.fake.in_flight):
        time.sleep(0.05)
    assert server.active_runs() == 0 and server.fake.in_flight == 0


def test_live_view_shows_a_refused_request_once_and_exits_2(live_server: LiveServer) -> None:
    raw, code = finish(spawn_rlm("run", "x", "--server", live_server.address,
                                 "--max-iterations", "100000"))
    shown = screen(raw)
    assert code == 2, shown
    assert any("error INVALID_ARGUMENT" in line for line in shown), shown
    assert sum("max_iterations must be between" in line for line in shown) == 1, shown
    assert shown[-1].startswith("failed: INVALID_ARGUMENT · ")


def test_plain_flag_prints_lines_even_on_a_terminal(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-PLAIN-TTY", [repl("print('hello')\nFINAL('bye')")])
    raw, code = finish(spawn_rlm("run", "MARK-PLAIN-TTY", "--server", live_server.address,
                                 "--plain"))
    assert code == 0
    assert "\x1b[" not in raw and "╭" not in raw
    lines = raw.replace("\r", "").splitlines()
    assert "  | hello" in lines and "bye" in lines
    assert lines[-1].startswith("answered · 1 iteration · 1 call · ")


def _reading_stdin(pid: int) -> bool:
    """Blocked in read(0, ...): the x86-64 syscall number of read is 0."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().startswith("0 0x0 ")
    except OSError:
        return False


def test_ctrl_c_while_reading_the_context_from_stdin_exits_130() -> None:
    child = spawn_rlm("run", "x", "--context-file", "-", "--server", "127.0.0.1:1")
    end = time.monotonic() + 20
    while not _reading_stdin(child.pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert _reading_stdin(child.pid)
    child.sendintr()
    raw, code = finish(child, timeout=10)
    assert code == 130, plain(raw)
    assert "rlm: cancelled" in plain(raw) and "Traceback" not in raw
