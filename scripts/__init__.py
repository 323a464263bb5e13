"""The project's commands, run as ``python -m scripts.NAME``, with their libraries in ``ops/`` and
the model code (U-Net, losses, degradations) in ``model/``."""
