"""Where things are in the repository."""

from __future__ import annotations

from pathlib import Path

from enhancer.contract import MODEL_NAME

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / ".run"
CONFIG = REPO / "config.properties"
MODEL_STORE = REPO / "model_store"
DEFAULT_MODEL = MODEL_STORE / f"{MODEL_NAME}.pt"
HANDLERS = REPO / "handlers"
HANDLER = HANDLERS / "enhancer_handler.py"
PACKAGE = HANDLERS / "enhancer"
MODEL_CONFIG = HANDLERS / "model-config.yaml"
