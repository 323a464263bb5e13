"""R1 through a real TorchServe: ``kill -9`` of the worker under 4-way load (scripts.ops.faults).

A plain client loses the requests of the batch the worker was running; ``enhancer.client`` (what
the page uses) sends a request once more after a worker death, so none is lost. The figures are
printed (``pytest -s``) and written to ``artifacts/worker_kills.txt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from scripts.ops.faults import kill_under_load
from scripts.ops.torchserve import Instance
from tests.helpers.images import encode, photo_array
from tests.helpers.servers import start_torchserve, stop_torchserve
from tests.helpers.tiny_models import slow_sr

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a model slow enough that a batch is always running when the worker is killed
    model = slow_sr(tmp_path_factory.mktemp("slow-model"), depth=6, width=48)
    ts = start_torchserve(model, tmp_path_factory.mktemp("ts-kill"), timeout=180)
    yield ts
    stop_torchserve(ts)


def test_kill_9_under_load_loses_a_batch_without_retry_and_nothing_with_it(server):
    client = Instance(
        server.workdir, server.inference_url, server.management_url, server.metrics_url
    ).client
    image = encode(Image.fromarray(photo_array(192, 144, 0)), "PNG")
    lines = []
    plain = kill_under_load(client, image, kills=3, retry=False, log=lines.append)
    retried = kill_under_load(client, image, kills=3, retry=True, log=lines.append)
    report = "\n".join([plain.summary(), retried.summary()])
    print(report)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "worker_kills.txt").write_text(report + "\n")
    # a kill costs at most the batch in flight (batchSize 4), and the worker comes back
    assert all(lost <= 4 for lost in plain.lost), report
    assert {o.result for o in plain.failed} <= {"500", "507"}, report
    assert all(seconds < 60 for seconds in plain.recovery_s + retried.recovery_s), report
    # sent once more after the death, every request of the page's client succeeds
    assert retried.lost == [0, 0, 0], report
    assert not retried.failed, report
