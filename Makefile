# Verbs for the project. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup setup-dev run stop test lint archive bench smoke

setup:
	scripts/setup.sh serve

setup-dev:
	scripts/setup.sh dev

# Sets up, starts TorchServe on model_store/enhancer.pt (waits until READY), then the page on :5000.
run:
	scripts/setup.sh serve
	$(PY) scripts/serve.py start
	$(PY) scripts/page.py start

stop:
	$(PY) scripts/page.py stop
	$(PY) scripts/serve.py stop

archive: setup
	$(PY) scripts/archive.py

# Enhances a generated photo through the running server (make run) and checks the output sizes.
smoke:
	$(PY) scripts/serve.py smoke

# Engine vs naive baseline vs TorchServe end to end; prints the table BENCHMARKS.md records.
bench: setup
	$(PY) scripts/bench.py

test: setup-dev
	$(PY) -m pytest

lint: setup-dev
	.venv/bin/ruff check handlers frontend scripts tests

# -- Triton and Docker (README "Scaling out") ------------------------------------------------------
.PHONY: setup-triton triton docker docker-cuda
TRITON_ARGS ?=
IMAGE ?= image-enhancer

# PyTriton (its wheel bundles Triton Inference Server) and tritonclient, on top of `make setup`.
setup-triton: setup
	$(PY) -c "import pytriton, tritonclient.http" 2>/dev/null || $(PY) -m pip install --quiet -e '.[triton]'

# Triton serving model_store/enhancer.pt on 127.0.0.1:8000 (gRPC 8001, metrics 8002) until Ctrl-C;
# e.g. make triton TRITON_ARGS="--model runs/x/enhancer.pt --http-port 9000 --max-batch-size 8".
triton: setup-triton
	$(PY) scripts/triton_serve.py $(TRITON_ARGS)

docker:
	docker build -t $(IMAGE):cpu .

docker-cuda:
	docker build --build-arg VARIANT=cuda -t $(IMAGE):cuda .

# -- Train, export, evaluate (README "Train, export, evaluate") -----------------------------------
.PHONY: train finetune train-tiny train-clean train-clean-status train-clean-snapshot export evaluate
DATA ?= ../shared/data
RUN ?= runs/default
EVAL_SETS ?= $(DATA)/eval/set5 $(DATA)/eval/set14 $(DATA)/eval/b100 $(DATA)/eval/kodak24

# The shipped default's recipe (scripts/train.py's defaults), at low priority: hours on 2 CPU cores.
train: setup-dev
	nice -n 10 $(PY) scripts/train.py --out $(RUN) --data $(DATA)/train $(TRAIN_ARGS)

# The long `clean` run (issue 8; runs/clean/README.md): start or resume it in the background at
# nice 19 in $(CLEAN_RUN) (default ../runs/clean), seeded from the committed runs/clean/ snapshot
# when that is further along. It survives the session; snapshot it before the session ends.
train-clean: setup-dev
	scripts/train_clean.sh start

train-clean-status:
	scripts/train_clean.sh status

# Copy the run's checkpoint, curve and settings into runs/clean/ for committing.
train-clean-snapshot:
	scripts/train_clean.sh snapshot

# Stage 2 of the shipped default: fine-tune $(RUN)/model.pth with larger crops and more JPEG.
finetune: setup-dev
	nice -n 5 $(PY) scripts/train.py --out runs/stage2 --init-weights $(RUN)/model.pth --data $(DATA)/train \
		--epochs 32 --sizes 64,64,80 --lr 2e-4 --degrade p_jpeg=0.9 --keep-every 4 --seed 1 $(TRAIN_ARGS)

# Seconds: a tiny model on CPU, to check the pipeline.
train-tiny: setup-dev
	$(PY) scripts/train.py --out runs/tiny --data $(DATA)/train --nf 8,16 --blocks 1,1 --epochs 2 \
		--iters 4 --bs 4 --sizes 16 --val-every 4

# Trace $(RUN)/model.pth into model_store/enhancer.pt + card; proves the trace and measures seams.
export: setup-dev
	$(PY) scripts/export.py --weights $(RUN)/model.pth --out model_store/enhancer.pt --tile 256 \
		--overlap auto --seam-image $(DATA)/eval/kodak24/kodim01.png

# PSNR/SSIM tables (bicubic and real-world tracks) through the engine; stores them in the card.
evaluate: setup-dev
	$(PY) scripts/evaluate.py --model model_store/enhancer.pt --sets $(EVAL_SETS) --scales 2 4 \
		--out runs/eval.md --json runs/eval.json --write-card
