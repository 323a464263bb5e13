"""The fixed requests of the byte-identity check and the sha256 of their outputs, recorded from
the engine before it became the ``enhancer`` package (the flat ``handlers/*.py`` modules at commit
2573aa9), on images made here and tiny fixed-seed models (``tiny_models.tiny_sr`` and
``tiny_restore`` with their default seed 0). tests/test_golden.py checks the engine in process,
tests/test_torchserve_e2e.py the same requests served from the archive.

The hashes hold for this project's pinned torch, Pillow and libwebp on CPU (1 or more threads);
they are not meant to match on a GPU. A deliberate change of the engine's pixels or encoding
updates this table in the same commit and says why.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            0.5 + 0.4 * np.sin(x / max(width, 1) * 3.1 + 0.3),
            0.5 + 0.4 * np.cos(y / max(height, 1) * 2.7),
            0.5 + 0.3 * np.sin((x + y) / 9.0),
        ],
        axis=-1,
    )
    rgb[(x // 7 + y // 5) % 2 == 0] *= 0.85
    rgb += rng.normal(0, 0.03, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def inputs() -> dict[str, bytes]:
    rgb = Image.fromarray(_photo(45, 33, 1))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray((np.arange(45 * 33).reshape(33, 45) % 256).astype(np.uint8)))
    gray16 = Image.fromarray(_photo(37, 29, 2)[:, :, 0].astype(np.uint16) * 257)
    return {
        "rgb.png": _encode(rgb, "PNG"),
        "rgb.jpg": _encode(rgb, "JPEG", quality=90),
        "rgb.webp": _encode(rgb, "WEBP", quality=90),
        "rgba.png": _encode(rgba, "PNG"),
        "gray.png": _encode(rgb.convert("L"), "PNG"),
        "gray16.png": _encode(gray16, "PNG"),
        "palette.gif": _encode(rgb.convert("P"), "GIF"),
        "big.png": _encode(Image.fromarray(_photo(150, 97, 3)), "PNG"),
    }


# (model, input, options) -> sha256 of the output, recorded from the engine at commit 2573aa9.
GOLDEN = {
    ("sr", "rgb.png", ()): "43cb68c1b68a4c181b9b6bfaffa5a630009eb82fc832d27ee854fa0becf45e58",
    (
        "sr",
        "rgb.png",
        (("scale", "3"),),
    ): "1bf7b1975c250253d48198f0ddcfd5fa3306944e585cb5797d200bb74e7b4b56",
    (
        "sr",
        "rgb.png",
        (("scale", "4"), ("format", "webp")),
    ): "1bea20fdc2ec32979c37db909c7d6a6fcb97fc16a01d0fc840438b93b8f70fba",
    (
        "sr",
        "rgb.jpg",
        (("scale", "1.5"), ("quality", "80")),
    ): "78549432901181066ecd9ded5b8d4fb9243051bb7d2b4e93f6897e473710b048",
    (
        "sr",
        "rgb.webp",
        (("scale", "2.5"),),
    ): "24f4809c755b3c0acc6fb9832c55a238fb67b06d778a9be426189027910154fa",
    (
        "sr",
        "rgba.png",
        (("scale", "2"),),
    ): "98b6b041cbd6202da05e11a7cf7931fdbd1b7d9531aa8f82519379315b70a72f",
    (
        "sr",
        "rgba.png",
        (("scale", "3"), ("format", "jpeg")),
    ): "dfda032f97787fe0eae185f5ec5280458b254932437fa0c3798181629f174334",
    (
        "sr",
        "gray.png",
        (("scale", "2"), ("format", "jpeg"), ("quality", "95")),
    ): "a3a6ce40ee5f3c87b47d19a6568da90b70f891d6b03fc1fac3f6af93deaa4098",
    (
        "sr",
        "gray16.png",
        (("scale", "2"),),
    ): "e54d39af847764c2e38ad000553ba5df5e2947501cbbf0dd5bd41e810ff1474a",
    (
        "sr",
        "palette.gif",
        (("scale", "2"),),
    ): "41dea0a3908c26b2d986966c90363a4749f2423e84d595b413225be98e12d5fc",
    (
        "sr",
        "big.png",
        (("scale", "3"), ("tile", "64")),
    ): "6ab7d74facd5dcf36c3cd165eef0bc71724c5597f90e05505dbd8d7083926957",
    (
        "sr",
        "big.png",
        (("scale", "2"), ("strength", "0.5")),
    ): "0cdf3a950370e7361be83777cbff64880f0c09d2f6dad38533cd048e637a4142",
    (
        "sr",
        "big.png",
        (("scale", "1"),),
    ): "c74d38b035587f84d0b539f72b2f7bf178a51c627e5cef2d2eb9e8ad2439c332",
    (
        "restore",
        "rgb.png",
        (("scale", "1"),),
    ): "7377a90cc3f0dcdb478499785440223c09a4359342791c24868e9767596db98d",
    (
        "restore",
        "big.png",
        (("scale", "2"), ("format", "png")),
    ): "b1a390fd0c849c8212d42a86b00fa5c4bd2900f9561a98e051560e116db14036",
    (
        "restore",
        "rgba.png",
        (("scale", "1.25"), ("format", "webp"), ("quality", "70")),
    ): "357d06da36b6baadb87a1415fcf0c08aecd328db62c4363b99f9bddce3090642",
}
