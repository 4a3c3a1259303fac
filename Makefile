# Quick start: `make demo` and `make test` each create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml setup.py kernels/CMakeLists.txt $(wildcard kernels/src/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Also builds the fused C++ kernels (edgelstm.fast._kernels, ~40 s) and
	@# fails if they do not build. No compiler: EDGELSTM_BUILD_KERNELS=0 make ...
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The main job on shipped data: predict, convert to ONNX (verified), quantize to
# int8 (report), export for streaming and stream a WAV on both backends.
DEMO := .demo
demo: $(STAMP)
	$(BIN)/python examples/demo.py
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/edgelstm info examples/fsdd/model
	$(BIN)/edgelstm convert examples/basicmotions/model $(DEMO)/basicmotions.onnx --verify
	$(BIN)/edgelstm run examples/basicmotions/model \
		-i examples/basicmotions/samples/walking_test20.npy -o $(DEMO)/walking.npz
	$(BIN)/edgelstm quantize examples/basicmotions/model $(DEMO)/basicmotions-int8
	$(BIN)/edgelstm quantize examples/basicmotions/model $(DEMO)/basicmotions.int8.onnx
	$(BIN)/edgelstm convert examples/fsdd/model $(DEMO)/fsdd-stream.onnx --streaming --verify
	$(BIN)/edgelstm stream examples/fsdd/model examples/fsdd/samples/8_jackson_2.wav
	$(BIN)/edgelstm stream $(DEMO)/fsdd-stream.onnx examples/fsdd/samples/8_jackson_2.wav

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache edgelstm/fast/_kernels*
