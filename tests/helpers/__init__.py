"""Test helpers, imported as ``tests.helpers.*``: images made in code (``images``), tiny models
(``tiny_models``), real TorchServe servers (``servers``, also a pytest plugin) and a stand-in for
TorchServe's Context (``context``)."""
