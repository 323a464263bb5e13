"""The engine's outputs, byte for byte, for a fixed set of requests: a guard against any change.

The requests and the recorded hashes are in tests/helpers/golden.py.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from enhancer.engine import Enhancer
from enhancer.settings import EnhancerSettings
from tests.helpers.golden import GOLDEN, inputs
from tests.helpers.tiny_models import tiny_restore, tiny_sr

# The hashes were recorded on TorchScript; the CPU backend is checked against it in test_backends.
TORCHSCRIPT = EnhancerSettings(backend="torchscript")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return {
        "sr": Enhancer.load(tiny_sr(tmp_path_factory.mktemp("golden-sr")), settings=TORCHSCRIPT),
        "restore": Enhancer.load(
            tiny_restore(tmp_path_factory.mktemp("golden-restore")), settings=TORCHSCRIPT
        ),
    }


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def outputs(engines) -> dict:
    images = inputs()
    return {
        key: hashlib.sha256(engines[key[0]].enhance(images[key[1]], dict(key[2])).data).hexdigest()
        for key in GOLDEN
    }


def test_outputs_are_byte_identical_to_the_recorded_engine(engines, one_thread):
    got = outputs(engines)
    changed = {key: digest for key, digest in got.items() if digest != GOLDEN[key]}
    assert not changed, f"outputs changed for {len(changed)} request(s): {changed}"
