# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck proto install sandbox-deps bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) sandbox-deps

# bubblewrap is the sandbox; as root on Debian/Ubuntu install it if missing.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap"; \
	    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null)); \
	  else echo "warning: bwrap not found; install bubblewrap or set SANDBOX_ALLOW_MISSING"; fi; }

run: install
	@if [ -z "$$GEMINI_API_KEY$$GEMINI_BASE_URL$$OPENAI_API_KEY$$OPENAI_BASE_URL$$GOOGLE_GENAI_USE_VERTEXAI" ]; then \
	  echo "Set GEMINI_API_KEY (or GEMINI_BASE_URL for a Gemini-API-compatible server) to run the service." >&2; \
	  exit 2; fi
	$(BIN)/rlm-server

lint: $(STAMP)
	$(BIN)/ruff check rlm_service clients/python tests bench scripts
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# The benchmark suite (docs/performance.md, docs/img/). It puts rlms into its own
# .venv-rlms from PyPI on first use. make can't take --quick itself: use bench-quick,
# or pass flags as BENCH_ARGS="--only contexts".
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-rlms .pytest_cache .mypy_cache .ruff_cache
