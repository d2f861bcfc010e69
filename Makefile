# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned to the CPU wheel this machine's pip serves, so that the
# package's own `torch` requirement is already met and never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m monai_metalr.demo --output_dir demo_output

test: setup
	$(PY) -m pytest -q --timeout 600

clean:
	rm -rf demo_output .pytest_cache
