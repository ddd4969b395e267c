"""Large-context benchmark: end-to-end time and server peak RSS for one trivial run
over a big text context, sent inline (one message) or by UploadContext.

The server runs as its own `rlm-server` process, so its peak RSS (VmHWM, reset
before each run through /proc/PID/clear_refs) is its alone: not the client's, not
the sandboxed REPL's. The fake Gemini runs in this process; the run is two root
turns (print len(context); FINAL), so the time is the context's way in.

    .venv/bin/python -m bench.upload_bench [--sizes 100,256] [--inline 100] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from rlm_client import RLMClient

MARK = "MARK-UPLOAD-BENCH"
LINE = "the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUV\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _write_text(path: Path, size: int) -> None:
    block = (LINE * ((1 << 20) // len(LINE) + 1))[: 1 << 20].encode()
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def _run(target: str, context: Any, upload_above: int, size: int) -> float:
    started = time.perf_counter()
    with RLMClient(target, upload_above=upload_above) as client:
        fields = {}
        if upload_above == 0:
            cpu = time.process_time()
            fields["context_ref"] = client.upload_context(context).ref
            print(f"  upload {time.perf_counter() - started:.2f} s, client CPU "
                  f"{time.process_time() - cpu:.2f} s", file=sys.stderr)
            context = None
        events = list(client.stream(f"{MARK} how long?", context, timeout=300, **fields))
    elapsed = time.perf_counter() - started
    final = events[-1]
    assert final.HasField("final_answer"), final
    printed = [e.code_block.stdout.strip() for e in events if e.HasField("code_block")]
    assert printed == [str(size)], printed  # ASCII: characters = bytes
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,256", help="MiB, by upload")
    parser.add_argument("--inline", default="100", help="MiB, inline (empty for none)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sandbox-memory-mb", type=int, default=4096)
    parser.add_argument("--runtime-parent", default="/dev/shm",
                        help="where the server's RUNTIME_DIR goes (uploads and run dirs); "
                             "tmpfs as on Cloud Run, or a disk folder to compare")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fakes.gemini import FakeGemini

    with FakeGemini() as fake, tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="upload-bench-rt-", dir=args.runtime_parent) as rt:
        fake.script(MARK, ["```repl\nprint(len(context))\n```", "FINAL(done)"])
        port = _free_port()
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "HTTP_PORT": "-1",
               "METRICS_PORT": str(_free_port()), "GEMINI_API_KEY": "bench", "GEMINI_BASE_URL": fake.base_url,
               "GEMINI_MODEL_NAME": "fake-root", "SANDBOX_POOL_SIZE": "1",
               "SANDBOX_MEMORY_MB": str(args.sandbox_memory_mb),
               "SANDBOX_MAX_FILE_MB": str(max(512, 2 * args.sandbox_memory_mb)),
               "LOG_LEVEL": "ERROR", "RUNTIME_DIR": f"{rt}/runtime"}
        server = subprocess.Popen([str(Path(sys.executable).parent / "rlm-server")], env=env)
        assert server.poll() is None
        target = f"127.0.0.1:{port}"
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=60)
            time.sleep(1.0)  # the pool's first REPL
            print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                  f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
                  f"runtime dir under {args.runtime_parent}")
            print("| context | way | end to end (best, median of reps) | server peak RSS | "
                  "RSS / context |")
            print("|---|---|---|---|---|")
            cases = [(int(s), "inline") for s in args.inline.split(",") if s] + \
                    [(int(s), "upload") for s in args.sizes.split(",") if s]
            for mib, way in cases:
                path = Path(tmp) / f"context-{mib}.txt"
                if not path.exists():
                    _write_text(path, mib << 20)
                text = path.read_text() if way == "inline" else None
                times, peaks = [], []
                for _ in range(args.reps):
                    Path(f"/proc/{server.pid}/clear_refs").write_text("5")
                    base = _status(server.pid, "VmRSS")
                    if way == "inline":
                        times.append(_run(target, text, 1 << 62, mib << 20))
                    else:
                        times.append(_run(target, path, 0, mib << 20))
                    peaks.append(_status(server.pid, "VmHWM"))
                    time.sleep(0.5)
                del text
                peak = max(peaks)
                times.sort()
                print(f"| {mib} MiB | {way} | {times[0]:.2f} s ({times[len(times) // 2]:.2f} s) | "
                      f"{peak / 2**20:,.0f} MiB (idle {base / 2**20:,.0f}) | "
                      f"{peak / (mib << 20):.2f}x |", flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
