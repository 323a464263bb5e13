"""RELIABILITY.md section 6, security rows S1, S2 and S5, through a real TorchServe.

S1 and S2 use the session's server (the repository's config.properties with free ports). S5
builds archives and starts servers on them that must never become READY: a tampered model, an
edited handler and a damaged .mar are each refused, before the start or by the worker, saying why.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
import requests

from scripts.ops import torchserve as serve
from tests.helpers.calls import TIMEOUT, is_loopback, listening_sockets, photo_bytes, worker
from tests.helpers.servers import archive, launch_torchserve

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


def test_s1_every_port_on_loopback_and_no_model_registration(torchserve):
    """S1: all five listeners on 127.0.0.1 only, none in the worker; POST /models is a 405."""
    jvm = torchserve.pid()
    sockets = listening_sockets(jvm)
    expected = {
        torchserve.ports[key]
        for key in (
            "inference_address",
            "management_address",
            "metrics_address",
            "grpc_inference_port",
            "grpc_management_port",
        )
    }
    assert {port for _, port in sockets} == expected, sockets
    assert all(is_loopback(address) for address, _ in sockets), sockets
    assert listening_sockets(worker(torchserve)["pid"]) == []

    response = requests.post(
        f"{torchserve.management_url}/models",
        params={"url": "http://127.0.0.1:9/evil.mar"},
        headers={"Authorization": f"Bearer {torchserve.key('management')}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 405
    assert response.json()["type"] == "MethodNotAllowedException"
    log = torchserve.log_text()
    assert "can access any URL" not in log
    assert "Model API enabled: false" in log


@pytest.mark.parametrize("where", ["ping", "predictions", "management"])
def test_s2_token_required_everywhere(torchserve, where):
    """S2: no or a wrong token is a 400 InvalidKeyException, /ping included; the right one works."""
    if where == "management":
        url, right = f"{torchserve.management_url}/models", torchserve.key("management")
    else:
        url, right = f"{torchserve.inference_url}/ping", torchserve.key()
    call = requests.get
    kwargs: dict = {}
    if where == "predictions":
        url, call, kwargs = torchserve.predictions_url, requests.post, {"data": photo_bytes(10, 10)}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": right}):
        response = call(url, headers=headers, timeout=TIMEOUT, **kwargs)
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "InvalidKeyException"
    response = call(url, headers={"Authorization": f"Bearer {right}"}, timeout=TIMEOUT, **kwargs)
    assert response.status_code == 200, response.text[:300]


def _rezip(good: Path, target: Path, member: str, change) -> Path:
    """A valid zip holding ``good``'s members, with ``member``'s bytes passed through ``change``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info, change(data) if info.filename == member else data)
    return target


def _flip_middle(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def test_s5_tampered_model_is_refused_before_start_and_by_the_worker(tmp_path, sr_model):
    """S5: a .mar whose weights changed (a valid zip) is refused by the check before the start,
    naming the member; skipping that check, the worker refuses it (its manifest, then the card)."""
    good = archive.build_archive(sr_model, export_path=tmp_path / "good", store=True)
    tampered = _rezip(good, tmp_path / "store" / "enhancer.mar", sr_model.name, _flip_middle)
    started = time.monotonic()
    with pytest.raises(serve.ServeError, match="member enhancer.pt differs from its sha256"):
        launch_torchserve(tampered, tmp_path / "ts", timeout=120)
    assert time.monotonic() - started < 20
    with pytest.raises(serve.ServeError) as caught:
        launch_torchserve(tampered, tmp_path / "ts2", timeout=120, verify=False)
    message = str(caught.value)
    assert "cannot load model 'enhancer'" in message
    assert "ArchiveDamagedError: the archive is damaged: enhancer.pt has sha256" in message
    assert "no READY worker after" not in message  # reported from the log, not by the timeout


def test_s5_an_edited_handler_inside_the_archive_refuses_the_worker_start(tmp_path, sr_model):
    """A handler changed inside the .mar (the red team's case: it used to start and run)."""
    good = archive.build_archive(sr_model, export_path=tmp_path / "good", store=True)
    edited = _rezip(
        good,
        tmp_path / "store" / "enhancer.mar",
        "enhancer_handler.py",
        lambda data: data + b"\nprint('edited')\n",
    )
    started = time.monotonic()
    with pytest.raises(serve.ServeError) as caught:
        launch_torchserve(edited, tmp_path / "ts", timeout=120, verify=False)
    assert "the archive is damaged: enhancer_handler.py has sha256" in str(caught.value)
    assert time.monotonic() - started < 60  # the 20 s of the issue, with room for a loaded CPU


@pytest.mark.parametrize("verify", [True, False])
def test_s5_one_flipped_byte_in_the_mar_fails_the_start_saying_it_is_damaged(
    tmp_path, sr_model, verify
):
    """One flipped byte in a built (compressed) .mar: refused before the start by its recorded
    sha256; without that check, TorchServe cannot unpack it and the start fails at once saying so
    (it used to wait for a READY worker until the timeout)."""
    mar = archive.build_archive(sr_model, export_path=tmp_path / "store")
    data = bytearray(mar.read_bytes())
    data[len(data) // 2] ^= 0x01
    mar.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(serve.ServeError, match="enhancer.mar is damaged") as caught:
        launch_torchserve(mar, tmp_path / "ts", timeout=120, verify=verify)
    took = time.monotonic() - started
    assert took < (1 if verify else 20), (took, str(caught.value)[:300])


# -- R3: a model that can never load --------------------------------------------------------------

RETRY_WINDOW_S = 20  # maxRetryTimeoutInSec of the broken model
# TorchServe retries a failed worker after 0, 1, 1, 2, 3, 5, 8, 13, ... s: the step that straddles
# the window ends at most 13 s after it
BACKOFF_STEP_S = 13


def test_r3_a_model_whose_initialize_raises_turns_ping_unhealthy(tmp_path, sr_model):
    """R3: the worker's initialize raises every time (the archive's weights changed, so the
    handler's manifest check refuses them); TorchServe retries with backoff, and once
    maxRetryTimeoutInSec has passed /ping answers 500 "Unhealthy" (what a supervisor watches)."""
    from scripts.ops.properties import write_private_config
    from tests.helpers.servers import write_model_config

    config_file = write_model_config(
        tmp_path / "model-config.yaml", {"maxRetryTimeoutInSec": RETRY_WINDOW_S}
    )
    good = archive.build_archive(
        sr_model, export_path=tmp_path / "good", store=True, config_file=config_file
    )
    broken = _rezip(good, tmp_path / "store" / "enhancer.mar", sr_model.name, _flip_middle)
    workdir = tmp_path / "ts"
    workdir.mkdir()
    config = workdir / "config.properties"
    write_private_config(config)
    instance = serve.Instance.from_config(workdir, config)
    serve.launch(instance, config, broken.parent, "enhancer=enhancer.mar", verify=False)
    launched = time.monotonic()
    try:
        seen = []
        while time.monotonic() - launched < 180:
            try:
                response = requests.get(
                    f"{instance.inference_url}/ping",
                    headers={"Authorization": f"Bearer {instance.key()}"},
                    timeout=10,
                )
                seen.append(response.status_code)
                if response.status_code == 500:
                    break
            except (OSError, requests.RequestException, ValueError, KeyError, serve.ServeError):
                pass  # not listening yet, or no key file yet
            time.sleep(0.5)
        took = time.monotonic() - launched
        log = instance.log_text()
    finally:
        serve.stop(instance)
    first_failure = log.count("ArchiveDamagedError")
    print(
        f"R3: /ping 500 Unhealthy {took:.1f} s after the launch (window {RETRY_WINDOW_S} s); "
        f"{log.count('Retry worker')} worker retries, {first_failure} load errors logged"
    )
    assert seen and seen[-1] == 500, seen
    assert response.json()["status"] == "Unhealthy", response.text
    assert "ArchiveDamagedError" in log
    # the window, the backoff step that straddles it, and the JVM's start on a loaded CPU
    assert took < RETRY_WINDOW_S + BACKOFF_STEP_S + 30, took
