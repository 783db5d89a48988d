# rlhf_fast — `make help` lists the targets.
# Every target that runs Python first creates or refreshes .venv and builds the
# Rust extension in release mode; both steps are skipped when nothing changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := train,dev,classic,label
RUST_SRC := $(shell find rust -name '*.rs' -o -name Cargo.toml 2>/dev/null) Cargo.toml
DEPS_STAMP := $(VENV)/.stamp-deps
NATIVE_STAMP := $(VENV)/.stamp-native
# apt-get needs root; other users go through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "maturin>=1.7,<2"

# Dependencies are (re)installed when pyproject.toml changes.
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "maturin>=1.7,<2"
	$(PY) scripts/project_requirements.py $(EXTRAS) > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements.txt
	touch $@

# The extension is rebuilt (release, LTO) when any Rust source changes.
$(NATIVE_STAMP): $(DEPS_STAMP) $(RUST_SRC)
	source $(VENV)/bin/activate && maturin develop --release --quiet
	$(PY) -c "import rlhf_fast._native"
	touch $@

.PHONY: venv
venv: $(DEPS_STAMP) ## Create or refresh .venv with every dependency.

.PHONY: build
build: $(NATIVE_STAMP) ## Build the Rust extension (release) into .venv.

.PHONY: test
test: build ## Run the Rust kernel tests and the Python test suite.
	cargo test --quiet -p rlhf_fast_kernels
	$(PY) -m pytest -q

.PHONY: test-browser
test-browser: build ## Install Chromium + chromedriver (Debian apt) if missing, then run the labelling page's browser test.
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver; fi
	RLHF_FAST_REQUIRE_BROWSER=1 $(PY) -m pytest -q -rs tests/test_label_browser.py

.PHONY: test-all
test-all: build ## Run every test, slow ones included.
	cargo test --quiet -p rlhf_fast_kernels
	$(PY) -m pytest -q -m "not benchmark"

.PHONY: test-thorough
test-thorough: build ## Kernel property tests at 10,000 hypothesis cases each (several minutes).
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q tests/test_gae.py tests/test_kl.py tests/test_whiten.py \
		tests/test_group_advantages.py tests/test_batching.py tests/test_buffer.py

.PHONY: demo
demo: build ## Run the whole pipeline (SFT -> reward model -> PPO) offline on the built-in task.
	$(VENV)/bin/rlhf-fast demo --output-dir runs/demo

.PHONY: compare
compare: build ## PPO, GRPO, RLOO and DPO on the demo task, seeds 0-2, one report (copied to docs/compare/).
	$(VENV)/bin/rlhf-fast compare --output-dir runs/compare --seeds 0 1 2
	mkdir -p docs/compare/plots
	cp runs/compare/report.md runs/compare/compare.json docs/compare/
	cp runs/compare/plots/compare.png docs/compare/plots/

.PHONY: bench
bench: build ## Run the benchmarks that need no GPU and write benches/results/.
	mkdir -p .benchmarks
	$(PY) -m pytest benches/test_kernels_bench.py -m benchmark -q --benchmark-json=.benchmarks/kernels_pytest_benchmark.json
	bash scripts/setup_bench_env.sh
	.venv-bench/bin/python benches/run_all.py

.PHONY: classic
classic: build ## Run the classic-RL examples and write examples/classic/results/.
	$(PY) examples/classic/run_all.py

# Release wheels: abi3, manylinux2014 (glibc 2.17), linked with zig, each one checked
# (auditwheel show, ELF machine, glibc symbol versions, tags, version) or refused.
WHEELS_VENV := .venv-wheels
WHEELS_STAMP := $(WHEELS_VENV)/.stamp

$(WHEELS_STAMP): scripts/wheel-requirements.txt
	$(PYTHON) -m venv $(WHEELS_VENV)
	$(WHEELS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEELS_VENV)/bin/python -m pip install --quiet -r scripts/wheel-requirements.txt
	touch $@

.PHONY: wheel
wheel: $(WHEELS_STAMP) ## Build the manylinux2014 abi3 wheel for this machine's CPU into target/wheels/.
	bash scripts/build_wheels.sh $(shell uname -m)

.PHONY: wheels
wheels: $(WHEELS_STAMP) ## Build the manylinux2014 abi3 wheels for x86_64 and aarch64 into target/wheels/.
	bash scripts/build_wheels.sh x86_64 aarch64

.PHONY: sdist
sdist: $(WHEELS_STAMP) ## Build the source distribution (pip builds it wherever Rust is installed).
	bash scripts/build_sdist.sh

.PHONY: wheel-check
wheel-check: wheel ## Install this machine's wheel into a fresh venv; import it and run the kernel smoke set.
	bash scripts/check_wheel.sh

.PHONY: sdist-check
sdist-check: sdist ## Install the sdist into a fresh venv (pip compiles it); run the kernel smoke set.
	bash scripts/check_wheel.sh target/wheels/rlhf_fast-*.tar.gz

.PHONY: test-aarch64
test-aarch64: $(WHEELS_STAMP) ## Kernel crate tests and the aarch64 wheel's smoke set under qemu (installs qemu via apt).
	bash scripts/test_aarch64.sh

.PHONY: lint
lint: build ## clippy (pedantic), ruff (lint and format) and the native stub check.
	cargo clippy --quiet --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy.stubtest rlhf_fast._native

.PHONY: clean
clean: ## Remove build outputs (keeps .venv).
	cargo clean
	rm -f $(NATIVE_STAMP)
