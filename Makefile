# LiverLocalization — the two commands that set everything up on a fresh machine (Python >= 3.10):
#   make demo   create .venv if missing, install, generate a phantom, run the whole pipeline on it
#   make test   same bootstrap, then the linter and the pytest suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch: the CPU build. On the project's machines `pip install torch==2.13.0` takes a local CPU wheel;
# elsewhere point TORCH_PIP_ARGS at a CPU index (e.g. --index-url <your mirror of the CPU wheels>).
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
DEMO_DIR  ?= demo_output
DEMO_SEED ?= 7
DEMO_SIZE ?= full

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[ml,batch,dicom,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/liverloc phantom --out $(DEMO_DIR)/phantom --seed $(DEMO_SEED) --size $(DEMO_SIZE)
	rm -rf $(DEMO_DIR)/result  # the demo's own results: liverloc run refuses to replace a folder it did not write
	$(VENV)/bin/liverloc run $(DEMO_DIR)/phantom/ct.nii.gz --landmarks $(DEMO_DIR)/phantom/landmarks.mrk.json \
		--truth $(DEMO_DIR)/phantom --out $(DEMO_DIR)/result
	@echo "Results and pictures: $(DEMO_DIR)/result (overview.png, couinaud.png, report.csv, segmentation.seg.nrrd)"

lint: $(STAMP)
	$(VENV)/bin/ruff check LiverLocalization Testing benchmarks

test: lint
	$(PY) -m pytest Testing -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
