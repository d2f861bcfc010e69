# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned to the CPU wheel this machine's pip serves, so that the
# package's own `torch` requirement is already met and never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# the demo's real CT (one contrast CT with liver + tumour labels); --no-deps: only its data files are used
DEMO_DATA_SPEC ?= liver-ct-segmentation-package==1.6.0
DEMO_STAMP := $(VENV)/.demo-data

.PHONY: setup demo test test-fast study study-data cuda-wheels clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps "$(DEMO_DATA_SPEC)"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m monai_metalr.apps.demo --output_dir demo_output

# two workers, one test file each at a time (module fixtures such as trained bundles are built once), each with one
# torch thread (also in the bundle runs they start): two workers of two threads each on two cores oversubscribe
# them, and the suite then takes twice as long (6.3 min against 13.4 min measured here)
TEST_THREADS ?= 1
test: $(DEMO_STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -n 2 --dist loadfile --timeout 600

# the unit tests alone (about a minute): everything but the tests marked slow (bundle runs, torchrun, long training
# loops, the study and benchmark scripts end to end)
test-fast: $(DEMO_STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -n 2 --dist loadfile --timeout 600 -m "not slow"

# the real-data study of docs/results.md (about 6-7 h on 2 CPU cores, resumable; needs Debian's apt for the head CT)
study: $(DEMO_STAMP)
	PY=$(PY) studies/run_all.sh

# the real data of docs/datasets.md (Colin27 + AAL, pyradiomics CT/MRI, 16 Kermany X-rays, deepbet weights), fetched
# with pip and apt-get into $(STUDY_DATA) (default ~/.cache/monai_metalr); idempotent, about 60 MiB kept
STUDY_DATA ?=
study-data: $(STAMP)
	$(PY) -m monai_metalr.data.downloads all $(if $(STUDY_DATA),--root $(STUDY_DATA))

# the wheels benchmarks/cuda_check.sh needs on the lent GPU machine, which has no network (Python 3.12, x86-64):
# monai, pytorch-ignite, nibabel, av and the demo CT, ~44 MiB in .cuda_wheels; then the device run tool with
# carry ['.cuda_wheels'] and `bash benchmarks/cuda_check.sh --wheels .cuda_wheels` (docs/benchmarks.md, CUDA)
cuda-wheels: $(STAMP)
	PY=$(PY) DEMO_DATA_SPEC="$(DEMO_DATA_SPEC)" bash benchmarks/cuda_wheels.sh .cuda_wheels

clean:
	rm -rf demo_output .pytest_cache
