# Quick start: `make demo` (pretrain on the built-in demo corpus, then zero-shot; `make demo SEED=1`) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/shards
DEMO_RUN ?= runs/demo
SEED ?= 0

.PHONY: venv demo demo-data test test-fast rehearsal clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,deepspeed,tracking]"
	touch $(STAMP)

venv: $(STAMP)

demo-data: $(STAMP)
	$(BIN)/python -m data_recipes build demo --out $(DEMO_DATA) --sample-rate 16000 --workers 2

# A fresh run each time: a fit into a used run dir writes last-v1.ckpt and zeroshot would score the old last.ckpt.
demo: demo-data
	rm -rf $(DEMO_RUN)
	$(BIN)/clap-lightning fit --config configs/experiment/demo.yaml run_dir=$(DEMO_RUN) seed=$(SEED) data.seed=$(SEED) \
		data.train=$(DEMO_DATA)/demo/train data.val=$(DEMO_DATA)/demo/valid data.test=$(DEMO_DATA)/demo/test
	$(BIN)/clap-lightning zeroshot --checkpoint $(DEMO_RUN)/checkpoints/last.ckpt \
		--data $(DEMO_DATA)/demo/test --out $(DEMO_RUN)/zeroshot
	$(BIN)/clap-lightning report $(DEMO_RUN)

# The paper's pipeline on miniature corpora: 20 corpora -> shards -> HTSAT-22 -> CLAP (killed, resumed) -> 26 tasks.
rehearsal: $(STAMP)
	$(BIN)/python -m tests.rehearsal --out runs/rehearsal

test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow and not slurm"

clean:
	rm -rf $(DEMO_DATA) runs
