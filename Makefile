# LLM Serving Lab: two commands do everything.
#   make lab    set up (once) and open JupyterLab on 00_preflight
#   make test   set up (once) and run the whole suite, every notebook included (.ci/run calls this)
# and, while working on the code:
#   make unit   the unit lane only (tests/unit: no engines, no servers), under a minute and a half
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
ENV_DIR ?= .venv
BIN := $(ENV_DIR)/bin
LOCK := requirements/lock.txt
STAMP := $(ENV_DIR)/.servelab-installed
# Where pip finds torch==2.13.0+cpu when no local wheel path has it, e.g. the PyTorch CPU wheel index.
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# llama.cpp is compiled for a portable AVX2 baseline, not -march=native: the native build's AMX kernels
# segfault on the first completion on some CPUs (seen with llama-cpp-python 0.3.36), and a portable
# build can be reused on any AVX2 machine. One compile (scripts/build-llamacpp) gives the binding's wheel
# and llama.cpp's own programs (llama-server, llama-bench, llama-perplexity); both are kept in the kit's
# cache, keyed by the version and the flags.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_VERSION := $(shell sed -n 's/^llama[-_]cpp[-_]python==//p' $(LOCK))
LLAMA_BUILD := $(shell sed -n 's/^build: *//p' data/engines/llamacpp_build.yaml)
LLAMA_KEY := $(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
CACHE := $(or $(SERVELAB_HOME),$(HOME)/.cache/servelab)
LLAMA_WHEELS := $(CACHE)/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)
LLAMA_TOOLS := $(CACHE)/llama.cpp/b$(LLAMA_BUILD)-$(LLAMA_KEY)
BUILD_LLAMACPP := LLAMA_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" scripts/build-llamacpp $(BIN)/python $(LLAMA_VERSION) $(LLAMA_WHEELS) $(LLAMA_TOOLS)
LAB_ARGS ?=
# JupyterLab refuses to run as root without this flag (containers and lab VMs often are root).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=
PIP_PIN := pip==25.3
# An offline room (README, "Offline room"): `make wheelhouse` writes one folder (WHEELHOUSE, default
# build/wheelhouse) with everything a seat installs; any other target given WHEELHOUSE=dir installs from that
# folder: pip with --no-index, llama.cpp and the model copied into the cache, the OS tools beside the venv's
# Python. Its seat commands run on $(PYTHON) before the venv exists (standard library only) and first refuse a
# wheelhouse made for another machine or lock.
WHEELHOUSE ?=
WHEELHOUSE_ARGS = --lock $(LOCK) --llama-wheels $(LLAMA_WHEELS) --llama-tools $(LLAMA_TOOLS)
SEAT := $(if $(filter wheelhouse,$(MAKECMDGOALS)),,$(WHEELHOUSE:%/=%))
FROM_WHEELHOUSE = PYTHONPATH=$(CURDIR)/src $(PYTHON) -m servelab.course.wheelhouse
ifneq ($(SEAT),)
SEAT_CHECK = $(FROM_WHEELHOUSE) check $(SEAT) $(WHEELHOUSE_ARGS)
PIP_FROM = --no-index --find-links $(abspath $(SEAT))/wheels
PIP_LOCK_FROM = $(PIP_FROM)
LLAMACPP = $(FROM_WHEELHOUSE) restore-llamacpp $(SEAT) $(WHEELHOUSE_ARGS) && $(BUILD_LLAMACPP)
MODEL_RESTORE = $(FROM_WHEELHOUSE) restore-model $(SEAT) $(WHEELHOUSE_ARGS)
# os-tools would ask the OS's package mirror; the seat takes them from the wheelhouse instead.
OS_TOOLS := wheelhouse-tools
else
PIP_LOCK_FROM = $(PIP_TORCH) --find-links $(LLAMA_WHEELS)
LLAMACPP = $(BUILD_LLAMACPP)
OS_TOOLS := os-tools
endif
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: lab test unit lint book setup env llamacpp model os-tools wheelhouse wheelhouse-tools preflight leftovers clean

lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) $(LAB_ROOT) notebooks/00_preflight.ipynb $(LAB_ARGS)

# The whole suite, once: lint, then tests/unit, tests/live, tests/notebooks (each notebook runs once, through
# papermill), tests/publish (the book, from those executed notebooks, in headless Chromium). Set-up runs first,
# timed on its own: seconds when everything is already in place.
test:
	@began=$$(date +%s); $(MAKE) --no-print-directory setup || exit $$?; \
	  echo "set-up took $$(( $$(date +%s) - began )) s"
	@began=$$(date +%s); $(MAKE) --no-print-directory lint || exit $$?; \
	  echo "lint took $$(( $$(date +%s) - began )) s"
	$(BIN)/python -m pytest tests --durations=25 $(PYTEST_ARGS)

# Besides the environment it needs only promtool, kubectl and dot (no model, no engine, no server).
unit: env os-tools
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

# Lint, format, types and import layering (the same checks as .pre-commit-config.yaml, on the whole tree).
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The course as a static HTML book (build/book/html/index.html) from the notebooks `make test` executed
# (artifacts/notebooks/): it runs no notebook, and stops with "run make test first" when a copy is missing.
book: env
	$(BIN)/python -m servelab.course.book

setup: env llamacpp $(OS_TOOLS) model

env: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "Python 3.11+ is needed (found: $(PYTHON)). Install python3.11 or run: make lab PYTHON=/path/to/python3.11"; exit 1; }
	@$(SEAT_CHECK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(ENV_DIR)
	$(BIN)/python -m pip install -q $(PIP_FROM) --upgrade $(PIP_PIN)
	@$(LLAMACPP)
	@echo "Installing the pinned environment (~3 min into a fresh .venv)..."
	set -o pipefail; time $(BIN)/python -m pip install --no-deps $(PIP_LOCK_FROM) -r $(LOCK) 2>&1 | grep -v "is ignored: it is neither"
	$(BIN)/python -m pip install -q --no-deps $(PIP_FROM) -e .
	@$(BIN)/python -c 'import importlib.util as u, sys; bad=[m for m in ("torchvision","torchaudio","torchcodec") if u.find_spec(m)]; bad and sys.exit(f"remove {bad}: they break vLLM CPU (pip uninstall -y {chr(32).join(bad)})")'
	touch $@

# llama.cpp's programs come from the same compile as the wheel above; here the script only checks the cache
# and links `current`, except on a machine whose wheel was cached before the kit built the programs.
llamacpp: env
	@$(LLAMACPP)

# Prometheus + promtool + Alertmanager (notebook 06, rule and alerting tests), Graphviz's dot (the notebooks'
# diagrams, docs/diagrams/) and headless Chromium (the book's browser test) from the OS when we can; otherwise
# say how. Debian names the Alertmanager binary prometheus-alertmanager; Chromium is Debian's own package
# (Ubuntu's apt one only installs a snap).
# The seed document is in Chinese: a small CJK font, so the book's screenshots show its words, not boxes.
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
os-tools:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  { command -v alertmanager || command -v prometheus-alertmanager; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing prometheus + promtool + alertmanager from the OS packages..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager >/dev/null; \
	else \
	  echo "NOTE: prometheus/promtool/alertmanager not found. Install them: 'sudo apt-get install prometheus"; \
	  echo "      prometheus-alertmanager' (Debian/Ubuntu) or 'conda install -c conda-forge prometheus' plus the"; \
	  echo "      alertmanager binary of a Prometheus release on PATH. Notebook 06 and the alerting tests need them."; \
	fi
	@if command -v dot >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing graphviz (dot, which draws the notebooks' diagrams) from the OS packages..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    graphviz >/dev/null; \
	else \
	  echo "NOTE: Graphviz's dot not found. Install it: 'sudo apt-get install graphviz' (Debian/Ubuntu), 'brew install"; \
	  echo "      graphviz' (macOS) or 'conda install -c conda-forge graphviz'. The notebooks draw their diagrams"; \
	  echo "      (docs/diagrams/) with it; without it they print this command instead, and the diagram tests fail."; \
	fi
	@if [ -n "$$SERVELAB_CHROMIUM" ] || { [ -x /usr/bin/chromium ] && [ -f $(CJK_FONT) ]; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && grep -qE '^ID="?debian"?$$' /etc/os-release; then \
	  echo "Installing chromium (headless, for the book's browser test) from the OS packages (~25 s, ~400 MB)..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-wqy-microhei >/dev/null; \
	elif [ -x /usr/bin/chromium ]; then :; \
	else \
	  echo "NOTE: /usr/bin/chromium not found. Install it: 'sudo apt-get install chromium fonts-wqy-microhei' (Debian;"; \
	  echo "      Ubuntu's package is a snap wrapper), or point SERVELAB_CHROMIUM at a Chromium or Chrome binary. The book's"; \
	  echo "      browser test (tests/publish/test_book.py) needs it."; \
	fi

model: env
	@$(MODEL_RESTORE)
	$(BIN)/servelab model prepare

# One folder a room installs from with no registry (see WHEELHOUSE above): the pinned wheels for this machine,
# the compiled llama.cpp, the converted model and the OS tools, with a manifest of the machine they are for.
wheelhouse: setup
	$(BIN)/python -m servelab.course.wheelhouse make $(or $(WHEELHOUSE),build/wheelhouse) $(WHEELHOUSE_ARGS) \
	  --cmake-args "$(LLAMA_CMAKE_ARGS)" --pip $(PIP_PIN) --torch-index "$(TORCH_INDEX)"

wheelhouse-tools: env
	@$(FROM_WHEELHOUSE) restore-tools $(SEAT) $(WHEELHOUSE_ARGS) --bin $(BIN)

preflight: setup
	$(BIN)/servelab preflight

leftovers:
	$(BIN)/servelab stop

clean:
	rm -rf artifacts results
