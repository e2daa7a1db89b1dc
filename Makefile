# isnet: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to a matching pair (torchvision wheels need the torch build
# they were compiled against); override TORCH_PACKAGES to install another pair.
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo bench clean

$(BIN)/isnet: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PACKAGES)
	$(BIN)/pip install -q -e ".[test]"
	# LXT (test reference for attention): its declared dependencies (transformers, bitsandbytes,
	# open_clip_torch, ...) are not needed for the parts the tests call
	$(BIN)/pip install -q --no-deps "lxt==2.1"
	touch $(BIN)/isnet

install: $(BIN)/isnet

test: install
	# a reference test whose package is missing fails instead of skipping (tests/conftest.py, require)
	ISNET_STRICT_REFERENCES=1 $(BIN)/python -m pytest -q -x --durations=15

demo: install
	$(BIN)/isnet demo --out runs/demo

bench: install
	$(BIN)/isnet bench speed --quick --out runs/bench-speed

clean:
	rm -rf $(VENV) runs .pytest_cache
