# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck proto install sandbox-deps bench bench-quick clean demo eval

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

# Debian's chromium for the progress page's browser tests (Playwright cannot
# download its own browsers here). Never fatal: without it those tests skip.
.PHONY: page-deps
page-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (for tests/http/test_page.py)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt_install="apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 chromium fonts-liberation"; \
	    ($$apt_install >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && $$apt_install >/dev/null 2>&1)) || \
	    echo "warning: apt-get could not install chromium; the page tests will be skipped"; \
	  else echo "warning: chromium not found and not root with apt-get to install it; the page tests will be skipped"; fi; }

# Node.js runs the Node client's test (tests/clients/test_node_client.py); as root on
# Debian/Ubuntu install it if missing, otherwise that test skips and says why.
node-deps:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nodejs and npm"; \
	    (apt-get install -y -qq nodejs npm >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nodejs npm >/dev/null)) || \
	    echo "warning: could not install nodejs/npm; the Node client test will skip"; \
	  else echo "warning: node not found; the Node client test will skip"; fi; }

run: install
	@if [ -z "$$GEMINI_API_KEY$$GEMINI_BASE_URL$$OPENAI_API_KEY$$OPENAI_BASE_URL$$GOOGLE_GENAI_USE_VERTEXAI" ]; then \
	  echo "Set GEMINI_API_KEY (or GEMINI_BASE_URL for a Gemini-API-compatible server) to run the service." >&2; \
	  exit 2; fi
	$(BIN)/rlm-server

lint: $(STAMP)
	$(BIN)/ruff check rlm_service clients/python tests bench scripts evals
	$(BIN)/mypy

# Three workers on two cores: much of the suite waits on subprocesses, sandboxes and
# sockets. A test file stays on one worker (its module-scoped servers are shared).
test: install page-deps node-deps lint
	$(BIN)/pytest -q -n 3 --dist loadfile

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# The benchmark suite (docs/performance.md, docs/img/). It puts rlms into its own
# .venv-rlms from PyPI on first use. make can't take --quick itself: use bench-quick,
# or pass flags as BENCH_ARGS="--only contexts".
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# Offline: the service on the scripted model, a planted fact in a few MB of logs, the live view.
demo: install
	$(BIN)/python -m evals.demo

# Long-context evals (S-NIAH, OOLONG, OOLONG-Pairs). Offline on the scripted model unless
# GEMINI_API_KEY is set. Flags go in ARGS: make eval ARGS=--quick, ARGS="--limit 5 --yes".
eval: install
	$(BIN)/python -m evals $(ARGS)

clean:
	rm -rf $(VENV) .venv-rlms .pytest_cache .mypy_cache .ruff_cache
