"""Calls to a test TorchServe (tests/helpers/servers.py) and checks on its worker, shared by
tests/test_torchserve_e2e.py and the reliability suite (tests/reliability/)."""

from __future__ import annotations

import io
import ipaddress
import os
import struct
import zlib
from pathlib import Path

import requests
from PIL import Image

from tests.helpers.images import encode, photo_array
from tests.helpers.servers import TorchServe

TIMEOUT = 120  # seconds per request: generous, the CPU is shared; never asserted on
RESTART_MARKERS = ("Retry worker", "Worker died", "Backend worker process died")


def photo_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0, **params) -> bytes:
    return encode(Image.fromarray(photo_array(width, height, seed)), fmt, **params)


def post_raw(
    ts: TorchServe, data: bytes, headers: dict[str, str] | None = None, **options
) -> requests.Response:
    """A raw body (as ``curl -T``), options as ``X-Enhance-*`` headers."""
    sent = {**ts.auth(), "Content-Type": "application/octet-stream", **(headers or {})}
    sent.update({f"X-Enhance-{name.capitalize()}": str(value) for name, value in options.items()})
    return requests.post(ts.predictions_url, data=data, headers=sent, timeout=TIMEOUT)


def post_form(ts: TorchServe, data: bytes, **fields) -> requests.Response:
    """Multipart, the image in ``data`` and options as fields (as ``curl -F``)."""
    form = {name: str(value) for name, value in fields.items()}
    return requests.post(
        ts.predictions_url,
        files={"data": ("photo", data)},
        data=form,
        headers=ts.auth(),
        timeout=TIMEOUT,
    )


def decoded(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text[:500]
    return Image.open(io.BytesIO(response.content))


def worker(ts: TorchServe) -> dict:
    """The model's one worker as the management API describes it."""
    (only,) = ts.model_status()["workers"]
    return only


def assert_alive_and_same(ts: TorchServe, pid: int) -> None:
    """A good request succeeds and the worker is the one from before, never restarted."""
    response = post_raw(ts, photo_bytes(24, 16))
    assert decoded(response).size == (48, 32)
    now = worker(ts)
    assert now["status"] == "READY" and now["pid"] == pid, now
    log = ts.log_text()
    assert not [marker for marker in RESTART_MARKERS if marker in log]


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG start (signature, IHDR with its CRC) declaring ``width`` x ``height``."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.fromarray(photo_array(20, 20, seed)).convert("P") for seed in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def listening_sockets(pid: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The TCP sockets process ``pid`` listens on, from /proc (what ``ss -ltnp`` shows for it)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((ipaddress.ip_address(words), int(port, 16)))
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)
