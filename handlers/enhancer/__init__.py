"""The enhancer: the engine and its doors, one import root for everything in the project.

Installed by pyproject (package folder ``handlers/enhancer``) and shipped whole in the TorchServe
archive with ``--extra-files``; it is imported by name, never by editing the import path.
Torch-free modules:
``contract``, ``errors``, ``card``, ``settings``, ``options``, ``passes`` (and ``client``).
``batch`` is the ``enhance`` command (a console script): the engine, or a server, over files.
"""

import logging

# A library's loggers stay silent unless the program configures logging (TorchServe, gunicorn and
# the tests do); without this, Python would print the client's warnings while a server starts.
logging.getLogger(__name__).addHandler(logging.NullHandler())
