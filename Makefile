# Two commands do all the set-up on a fresh machine:  make demo  /  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tinykd-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch comes first and pinned: pip takes these wheels from the local disk here (a CUDA build that also runs on CPU)
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test data lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package where apt is there, else the official files into ~/.cache/tinykd
data: $(STAMP)
	@if [ -f $(FMNIST) ] || [ -n "$$TINYKD_DATA" ]; then echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| $(PY) -c "from tinykd.data import build_datasets as b; b('fashion-mnist', download=True)"; \
	else $(PY) -c "from tinykd.data import build_datasets as b; b('fashion-mnist', download=True)"; fi

demo: $(STAMP) data
	$(VENV)/bin/tinykd demo

test: $(STAMP) data
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/pytest

bench: $(STAMP) data
	$(PY) bench/kd_gain.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
