"""Where things are in the repository."""

from __future__ import annotations

from pathlib import Path

from enhancer.contract import FACE_FILE, MODEL_NAME, RESTORE_FILE

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / ".run"
CONFIG = REPO / "config.properties"
MODEL_STORE = REPO / "model_store"
DEFAULT_MODEL = MODEL_STORE / f"{MODEL_NAME}.pt"
HANDLERS = REPO / "handlers"
HANDLER = HANDLERS / "enhancer_handler.py"
PACKAGE = HANDLERS / "enhancer"
MODEL_CONFIG = HANDLERS / "model-config.yaml"


def restore_beside(model: Path) -> Path | None:
    """The restore model that pairs with ``model``: ``restore.pt`` and its card in the same folder
    (the layout the archive has inside, and model_store/ ships), or None. With it the server runs
    the clean/restore family and takes the ``denoise`` option."""
    restore = Path(model).with_name(RESTORE_FILE)
    if Path(model).name == RESTORE_FILE or not restore.exists():
        return None
    return restore if restore.with_suffix(".json").exists() else None


def face_beside(model: Path) -> Path | None:
    """The face model served with ``model``: ``face.pt`` and its card in the same folder, or None.
    With it the server takes ``faces=auto``."""
    face = Path(model).with_name(FACE_FILE)
    return face if face.exists() and face.with_suffix(".json").exists() else None
