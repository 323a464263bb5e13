"""Operations: building the archive, starting and stopping TorchServe, the page and Triton.

The entry points in ``scripts/`` parse arguments and call these; the tests and the container's
entrypoint (``deploy/docker/entrypoint.py``) call them too.
"""
