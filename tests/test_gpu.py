"""The engine on a CUDA device (marked ``gpu``: skipped where there is none, see conftest.py).

The CPU runs are the reference: on the GPU the same request gives the same size and content type,
and pixels within a small tolerance of the CPU's (float32; half precision within a looser one, with
the card listing it).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from enhancer.engine import Enhancer
from enhancer.settings import EnhancerSettings
from tests.helpers.golden import inputs
from tests.helpers.tiny_models import tiny_sr

pytestmark = pytest.mark.gpu


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {
        "float32": tiny_sr(tmp_path_factory.mktemp("gpu-f32")),
        "half": tiny_sr(
            tmp_path_factory.mktemp("gpu-half"), dtypes=("float32", "float16", "bfloat16")
        ),
    }


@pytest.mark.parametrize("name", ["rgb.png", "rgba.png", "big.png"])
@pytest.mark.parametrize(("model", "tolerance"), [("float32", 1), ("half", 3)])
def test_cuda_matches_cpu(models, name, model, tolerance):
    settings = EnhancerSettings(precision="auto")
    cpu = Enhancer.load(models[model], device="cpu", settings=settings)
    gpu = Enhancer.load(models[model], device="cuda", settings=settings)
    data = inputs()[name]
    want = cpu.enhance(data, {"scale": "3", "format": "png"})
    got = gpu.enhance(data, {"scale": "3", "format": "png"})
    assert (got.width, got.height, got.content_type) == (want.width, want.height, want.content_type)
    assert np.abs(pixels(got.data) - pixels(want.data)).max() <= tolerance
