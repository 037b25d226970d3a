# paraisite developer and user commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch first on machines without an NVIDIA GPU (avoids a multi-GB CUDA download).
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= quick
GROUP ?= reproduce-$(PROFILE)
LOG_DIR ?= logs
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# Multirun launcher: local_parallel (joblib, 2 jobs, one thread each) on CPU; basic runs jobs one after the
# other (a single GPU); slurm submits one job per run. Each job trains its seeds as one ensemble.
LAUNCHER ?= $(if $(HAS_GPU),basic,local_parallel)
TRAINER ?= $(if $(HAS_GPU),gpu,cpu)
SWEEP := trainer=$(TRAINER) profile=$(PROFILE) group=$(GROUP) paths.log_dir=$(LOG_DIR) hydra/launcher=$(LAUNCHER) logger=csv \
	callbacks.progress_bar=null

.PHONY: help install check train test test-fast lint format reproduce status table zoo ltc-mf benchmark benchmark-defaults docs clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install torch; else $(BIN)/pip install "$(TORCH_SPEC)"; fi

# The editable install is redone only when pyproject.toml changed (or the venv was created): a stamp file.
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install paraisite with its dev and docs tools (again only if pyproject.toml changed)

check: install ## Fast static checks (CI runs them before the tests): ruff, format, mypy, import layers, file sizes
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python .ci/check_file_sizes.py

train: install ## Run the default training job (Dataset2, pretrained MEGNet, CPU)
	$(BIN)/paraisite-train

test: install ## Run the whole test suite (what CI runs)
	$(BIN)/python -m pytest tests --durations=15

test-fast: install ## Tests without the slow ones
	$(BIN)/python -m pytest tests -m "not slow"

lint: install ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

reproduce: install ## The paper's table: Steps I+II on 4 datasets, then Step III on 3 (PROFILE=quick|full)
	if [ -d experiments/$(GROUP)/state ]; then $(BIN)/paraisite state restore experiments/$(GROUP)/state $(LOG_DIR)/$(GROUP); fi
	$(BIN)/paraisite-train -m experiment=step1,step2 data=dataset1,dataset2,mix,aflow $(SWEEP)
	$(BIN)/paraisite-train -m experiment=step3 data=dataset1,dataset2,mix $(SWEEP)
	$(BIN)/paraisite table $(LOG_DIR)/$(GROUP)

status: install ## Which runs of a sweep are done, failed, running, interrupted or pending: make status GROUP=...
	$(BIN)/paraisite status $(LOG_DIR)/$(GROUP)

table: install ## Rebuild the table of a sweep into $(LOG_DIR)/$(GROUP)-table: make table GROUP=reproduce-quick
	$(BIN)/paraisite table $(LOG_DIR)/$(GROUP)

# Step III members saw AFLOW in Step II: only the other ab-initio dataset is held out from them (MIX: none).
# The shipped models must stay within 25 MB (tests/test_shipping.py): remove the ensembles these replace first.
ZOO_SHIP := OMP_NUM_THREADS=1 $(BIN)/paraisite zoo ship $(LOG_DIR)/$(GROUP) --evidence experiments/ltc-zoo/rows
zoo: install ## Pack a full sweep's LTC ensembles into paraisite/zoo/models (measured): make zoo GROUP=full-cpu-clean
	$(ZOO_SHIP) --step step2 --dataset AFLOW --name ltc-step2-aflow --cross Dataset1 Dataset2
	$(ZOO_SHIP) --step step2 --dataset Dataset2 --name ltc-step2-dataset2 --cross Dataset1 AFLOW
	$(ZOO_SHIP) --step step2 --dataset MIX --name ltc-step2-mix --cross AFLOW
	$(BIN)/python experiments/ltc-zoo/domain_evidence.py experiments/ltc-zoo/rows
	$(BIN)/python experiments/ltc-zoo/write_cards.py  # card.json of each, from the measured evidence

# ltc-mf, the recommended LTC model: its intervals and card figures come from the grouped CV of experiments/ltc-mf
# (run_cv.sh, then build_tables.py --candidate mf_ft/Measured --rescore-on mf/MF --latent: cv-l1/). ltc-step2-dataset1
# left the package for it (25 MB budget).
LTC_MF_CARD := --data-reference "AGL + ab-initio + 155 measured" \
  --use-for "the room-temperature LTC a measurement would give for a non-metallic crystal (W/mK), with a 95 % interval calibrated on chemical families it never saw; \`--fidelity ab-initio\` or \`agl\` for what a phonon BTE calculation or AFLOW's AGL model would give (for crystals like Dataset1 and Dataset2, ltc-step2-dataset2 and ltc-step2-mix give ab-initio values better: experiments/ltc-mf/paper-protocol)" \
  --not-for "metals, intermetallics, alloys and doped samples, or temperatures far from 300 K; precise values: out of family it is only somewhat better than a constant, so read the interval (about a factor 10 each way at 95 %)" \
  --training-data "AFLOW AGL (300 crystals), ab-initio Dataset1 and Dataset2 (238) and 155 measured room-temperature conductivities attached to registry structures (xia0WT/thermal_conductivity_summary, lrcfmd/thermal_conductivity_RF), all at once with the fidelity as MEGNet's global state, then fine-tuned on the measured ones"
ltc-mf: install ## Train (9 seeds, about 7 min on 2 cores) and ship the recommended LTC model: make ltc-mf
	PATH=$(BIN):$$PATH experiments/ltc-mf/train_shipped.sh $(LOG_DIR)/ltc-mf
	OMP_NUM_THREADS=1 $(BIN)/paraisite zoo ship $(LOG_DIR)/ltc-mf/ship --step mf_ft --dataset Measured --name ltc-mf \
	  --intervals experiments/ltc-mf/cv-l1/intervals.json --measured experiments/ltc-mf/cv-l1/evidence.json \
	  --measured-subset out_of_family $(LTC_MF_CARD)

benchmark: install ## Training/prediction throughput figures -> benchmarks/results/
	$(BIN)/python benchmarks/ensemble_throughput.py --out benchmarks/results/ensemble_throughput.json
	$(BIN)/python benchmarks/overhead_profile.py --out benchmarks/results/overhead_profile.json
	$(BIN)/python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
	$(BIN)/python benchmarks/predict_throughput.py --out benchmarks/results/predict_throughput.json
	$(BIN)/python benchmarks/cgcnn_featurize.py --out benchmarks/results/cgcnn_featurize.json
	$(BIN)/python benchmarks/cif_reading.py --out benchmarks/results/cif_reading.json

docs: install ## Build the documentation site into site/ (strict: a broken link or reference fails)
	$(BIN)/mkdocs build --strict

benchmark-defaults: install ## Thread/worker defaults idle and beside a busy process (~15-30 min) -> experiments/busy-defaults/
	$(BIN)/python benchmarks/busy_defaults.py

clean: ## Remove caches of the tools (not the data cache)
	rm -rf .pytest_cache .ruff_cache site
