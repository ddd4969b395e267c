"""Runs trajectories through the reference library rlms, inside rlms' own venv.

Started by bench/rlms_side.py as ``.venv-rlms/bin/python bench/rlms_worker.py SPEC``.
Only the standard library and rlms are importable here. rlms 0.1.3 builds its
Gemini client as ``genai.Client(api_key=..., http_options=HttpOptions(timeout=...))``
with no base URL, so the SDK takes it from ``GOOGLE_GEMINI_BASE_URL``, which
the parent sets to the fake's address.

SPEC is JSON: api_key, warmup (a prompt run untimed before each job) and jobs
(prompt, context, max_depth, reps). The result is one line
``BENCH-RESULT [{"times": [...], "answers": [...], "errors": [...]}, ...]``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _rlm(spec: dict[str, Any], max_depth: int) -> Any:
    from rlm import RLM

    return RLM(
        backend="gemini",
        backend_kwargs={"model_name": "fake-root", "api_key": spec["api_key"]},
        other_backends=["gemini"],
        other_backend_kwargs=[{"model_name": "fake-sub", "api_key": spec["api_key"]}],
        environment="local",
        max_depth=max_depth,
        max_iterations=50,
        verbose=False,
    )


def run_job(spec: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    rlm = _rlm(spec, job["max_depth"])
    if spec.get("warmup"):
        rlm.completion(job["context"], root_prompt=spec["warmup"])
    times: list[float] = []
    answers: list[str] = []
    errors: list[str] = []
    for _ in range(job["reps"]):
        started = time.perf_counter()
        try:
            result = rlm.completion(job["context"], root_prompt=job["prompt"])
            answers.append(str(result.response))
        except Exception as exc:  # reported, not hidden: the bench prints it
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            answers.append("")
        times.append(time.perf_counter() - started)
    return {"times": times, "answers": answers, "errors": errors}


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    results = [run_job(spec, job) for job in spec["jobs"]]
    print("BENCH-RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
