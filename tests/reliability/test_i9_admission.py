"""RELIABILITY.md I9, admission by cost through a real TorchServe: a stand-in model of known, real
cost (a wide, deep TinySR), a short ``responseTimeout``, and the boundary: the largest scale the
server admits for an image finishes well inside the timeout (no worker restart), the next
hundredth is refused at once with a 413 that names the estimate, the budget and that scale."""

from __future__ import annotations

import math
import re
import time

import pytest
import requests
from PIL import Image

from enhancer.admission import Throughput, work
from enhancer.card import ModelCard
from enhancer.settings import EnhancerSettings
from tests.helpers.images import encode, photo_array
from tests.helpers.servers import start_torchserve, stop_torchserve
from tests.helpers.tiny_models import slow_sr

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

RESPONSE_TIMEOUT = 24  # seconds; the budget is half of it
RESTART_MARKERS = ("Retry worker", "Worker died", "Backend worker process died")
_CALIBRATED = re.compile(
    r"calibrated on a \d+x\d+ noise image: ([\d.]+) model MP/s, ([\d.]+) output MP/s "
    r"for the rest, on (\w+)"
)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    model = slow_sr(tmp_path_factory.mktemp("slow-model"))
    ts = start_torchserve(
        model,
        tmp_path_factory.mktemp("ts-slow"),
        model_config={"responseTimeout": RESPONSE_TIMEOUT, "batchSize": 1},
        timeout=180,
    )
    yield ts, model
    stop_torchserve(ts)


def post(ts, data: bytes, scale: str) -> requests.Response:
    headers = {**ts.auth(), "Content-Type": "application/octet-stream", "X-Enhance-Scale": scale}
    return requests.post(ts.predictions_url, data=data, headers=headers, timeout=120)


def test_i9_the_largest_admitted_scale_finishes_and_the_next_is_refused(slow_server):
    ts, model = slow_server
    found = _CALIBRATED.search(ts.log_text())
    assert found, "the worker logs its calibration"
    model_rate, other_rate, backend = float(found[1]), float(found[2]), found[3]
    throughput = Throughput(1e-6 / model_rate, 1e-6 / other_rate, backend)
    budget = RESPONSE_TIMEOUT * 0.5
    assert f"a batch may take {budget:.0f} s" in ts.log_text()
    # an image whose 2x pass the worker's own figures put at about 60% of the budget
    card = ModelCard.load(model.with_suffix(".json"))
    tile = EnhancerSettings().openvino_tile if backend == "openvino" else card.tile
    side = 64
    while throughput.seconds(work(side + 32, side + 32, 2.0, card, tile)) < 0.6 * budget:
        side += 32
    data = encode(Image.fromarray(photo_array(side, side * 3 // 4, 0)), "PNG")
    # the largest scale inside the output pixel cap (on a fast machine the image grows so big that
    # scale 8 would be refused for its size, before its cost is looked at)
    cap = EnhancerSettings().max_output_pixels
    over = min(8.0, math.floor(math.sqrt(cap / (side * (side * 3 // 4))) * 100) / 100)

    started = time.monotonic()
    refused = post(ts, data, f"{over:g}")
    assert refused.status_code == 413, refused.text[:300]
    assert time.monotonic() - started < 5  # before any work
    body = refused.json()
    assert body["type"] == "PayloadTooLarge"
    assert f"time budget of {budget:.0f} s per request" in body["message"]
    assert re.search(r"needs about \d+ s here", body["message"])
    best = body["max_scale"]
    assert best is not None and 1 <= best < over
    assert f"the largest scale that fits this image is {best:g}" in body["message"]

    started = time.monotonic()
    admitted = post(ts, data, f"{best:g}")
    took = time.monotonic() - started
    assert admitted.status_code == 200, admitted.text[:300]
    assert took < RESPONSE_TIMEOUT, took
    assert post(ts, data, f"{best + 0.01:g}").status_code == 413
    assert not any(marker in ts.log_text() for marker in RESTART_MARKERS)
