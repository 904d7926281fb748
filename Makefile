# One entry point per task. `make demo` and `make test` install what is missing first.
UV_VERSION := 0.13.8
SYNCED := .venv/.synced
# Bytecode made once, ahead: every worker, ingest child and test process imports Faust,
# aiokafka and ours, and where PYTHONDONTWRITEBYTECODE is set (or the tree is read-only)
# each would compile them from source again: 2.2 s per process against 0.7 s, measured.
export UV_COMPILE_BYTECODE := 1
COMPILE = .venv/bin/python -m compileall -q streams producers deploy bench tests >/dev/null

.PHONY: install demo test test-cluster test-unit test-loop lint worker produce kafka bench clean

# native/ (Rust) is built by uv sync through maturin: it needs cargo (rustup's, or Debian's)
export PATH := $(HOME)/.cargo/bin:$(PATH)
$(SYNCED): pyproject.toml uv.lock native/pyproject.toml native/Cargo.toml native/src/lib.rs
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --progress-bar on "uv==$(UV_VERSION)"
	@command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup.rs, or apt-get install cargo)" >&2; exit 1; }
	uv sync --frozen
	@touch $@

install: $(SYNCED)

demo: $(SYNCED)  ## broker (if needed) + worker + producer + live view; Ctrl-C stops all
	@$(COMPILE)
	.venv/bin/messaging-metrics demo

test: $(SYNCED)  ## the suite: unit, integration on a real local broker, end to end
	@$(COMPILE)
	.venv/bin/pytest -m "not cluster"

test-cluster: $(SYNCED)  ## the three-broker cluster test (three JVMs of its own)
	@$(COMPILE)
	.venv/bin/pytest -m cluster

test-unit: $(SYNCED)
	.venv/bin/pytest tests/unit

LOOPS ?= 5
test-loop: $(SYNCED)  ## the integration and e2e tests LOOPS times, then a tally of failures
	@$(COMPILE)
	.venv/bin/python -m tests.loop --runs $(LOOPS)

lint: $(SYNCED)
	.venv/bin/ruff check streams producers deploy tests

worker: $(SYNCED)
	@$(COMPILE)
	.venv/bin/messaging-metrics worker

produce: $(SYNCED)
	.venv/bin/messaging-metrics produce

kafka: $(SYNCED)
	.venv/bin/messaging-metrics kafka

bench:  ## the benchmark with its peers (Quix Streams, matplotlib: the 'bench' extra)
	@command -v uv >/dev/null 2>&1 || python3 -m pip install "uv==$(UV_VERSION)"
	uv sync --frozen --extra bench
	@rm -f $(SYNCED)  # the next 'make test' syncs back to the plain set
	@$(COMPILE)
	.venv/bin/python -m bench

clean:
	rm -rf .venv .pytest_cache .ruff_cache .hypothesis .loop-logs
