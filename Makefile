# Two set-up commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines take the local CPU wheel of torch; machines with an NVIDIA GPU keep (or get) a CUDA build.
TORCH_CPU := torch==2.13.0
# GPU machines: the same torch version, CUDA build, from PyTorch's wheel index (pick the CUDA your driver supports)
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
# tested versions of everything else (see the file's header)
CONSTRAINTS := constraints.txt
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test test-fast lint install install-dev lock clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@touch $@

$(VENV)/.torch: $(VENV)/.created
ifeq ($(HAS_GPU),1)
	$(PY) -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' and torch.version.cuda else 1)" \
		2>/dev/null || $(PIP) install --quiet $(TORCH_CPU) --index-url $(TORCH_CUDA_INDEX)
else
	$(PIP) install --quiet $(TORCH_CPU)
endif
	@touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.torch pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/steelforge run demo

test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check steelforge tests bench
	$(PY) -m pytest -q

# inner loop: everything but the slow end-to-end and multi-process tests
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow and not distributed" -x

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check steelforge tests bench
	$(VENV)/bin/ruff format --check steelforge tests bench

# newest releases within pyproject.toml's ranges, in a scratch venv; run `make test` after it
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(TORCH_CPU)
	.venv-lock/bin/pip install --quiet -e ".[dev]"
	{ sed -n '/^#/p' $(CONSTRAINTS); .venv-lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
