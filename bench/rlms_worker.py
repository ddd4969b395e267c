"""Runs one trajectory through the reference library rlms, inside rlms' own venv.

Started by bench/rlms_side.py as ``.venv-rlms/bin/python bench/rlms_worker.py SPEC``.
Only the standard library and rlms are importable here. rlms 0.1.3 builds its
Gemini client as ``genai.Client(api_key=..., http_options=HttpOptions(timeout=...))``
with no base URL, so the SDK takes it from ``GOOGLE_GEMINI_BASE_URL``, which
the parent sets to the fake's address.

SPEC is JSON: prompt, context, max_depth, reps, warmup (a prompt run first,
untimed). The result is one line ``BENCH-RESULT {"times": [...], ...}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    from rlm import RLM

    rlm = RLM(
        backend="gemini",
        backend_kwargs={"model_name": "fake-root", "api_key": spec["api_key"]},
        other_backends=["gemini"],
        other_backend_kwargs=[{"model_name": "fake-sub", "api_key": spec["api_key"]}],
        environment="local",
        max_depth=spec["max_depth"],
        max_iterations=50,
        verbose=False,
    )
    if spec.get("warmup"):
        rlm.completion(spec["context"], root_prompt=spec["warmup"])
    times: list[float] = []
    answers: list[str] = []
    errors: list[str] = []
    for _ in range(spec["reps"]):
        started = time.perf_counter()
        try:
            result = rlm.completion(spec["context"], root_prompt=spec["prompt"])
            answers.append(str(result.response))
        except Exception as exc:  # reported, not hidden: the bench prints it
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            answers.append("")
        times.append(time.perf_counter() - started)
    print("BENCH-RESULT " + json.dumps({"times": times, "answers": answers, "errors": errors}),
          flush=True)


if __name__ == "__main__":
    main()
