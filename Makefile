# Quick start: `make demo` and `make test` each create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

# Installed the way a user installs (`pip install .`, not editable), so the suite
# tests the package pip builds: the fused kernels compiled into edgelstm/fast/
# against the scipy-openblas32 wheel. Reinstalls when any packaged source changes.
SOURCES := pyproject.toml setup.py MANIFEST.in kernels/CMakeLists.txt \
	$(shell find edgelstm converters quantize kernels/src -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.inc' \) 2>/dev/null)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Builds edgelstm.fast._kernels (~40 s) and fails if it does not build.
	@# No compiler: EDGELSTM_BUILD_KERNELS=0 make ... (pure-MLX path only).
	$(BIN)/python -m pip install -q ".[dev]"
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

# From tests/, so neither pytest nor the suite's subprocesses import the source
# tree instead of the installed package (Python puts the cwd first on sys.path).
# The second run keeps the pure-MLX path (what a GPU or a kernel-less install runs)
# tested end to end through the layers, streaming, quantized cells and ONNX runner.
PURE_TESTS := test_kernels.py test_layers.py test_streaming.py test_quantize.py test_onnx_runner.py
test: $(STAMP)
	cd tests && EDGELSTM_EXPECT_INSTALLED=1 ../$(BIN)/python -m pytest -q
	cd tests && EDGELSTM_KERNELS=0 ../$(BIN)/python -m pytest -q $(PURE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache edgelstm/fast/_kernels*
