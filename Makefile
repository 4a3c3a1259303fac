# Quick start: `make demo` and `make test` each create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml kernels/pyproject.toml $(wildcard kernels/src/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@# Optional fused C++ kernels (kernels/): ~1 min to build; without them the
	@# pure-MLX path runs and `edgelstm info` says why.
	$(BIN)/python -m pip install -q "setuptools>=77" "cmake>=3.24" "nanobind>=3.0,<3.1"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pip install -q --no-build-isolation ./kernels \
		|| echo "warning: edgelstm_kernels did not build; using the pure-MLX path" >&2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
