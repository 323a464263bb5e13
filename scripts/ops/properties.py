"""TorchServe's config.properties: the one reader and the one writer of it.

``write_config`` is how every variant is made (a private TorchServe for tests and the benchmark
with free ports, the container's with its inference address on all interfaces): the repository's
file with some keys replaced, so limits, token authorization and the rest stay as ``make run`` has
them.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path

from scripts.ops.paths import CONFIG


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java properties file of ``key=value`` lines (comments and ``\\`` escapes handled).

    Only what config.properties uses is supported: no line continuations, ``=`` as the separator.
    """
    values: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = re.sub(r"\\(.)", r"\1", value.strip())
    return values


def escape_property(value: str) -> str:
    """The properties-file form of ``value`` (backslashes doubled)."""
    return value.replace("\\", "\\\\")


def write_config(
    path: Path, values: Mapping[str, str], *, base: Path = CONFIG, note: str = "overrides"
) -> Path:
    """Write ``base`` with the keys in ``values`` replaced: their lines are dropped and the new
    values appended after a comment naming ``note``. Comments and every other key stay."""
    kept = []
    for line in Path(base).read_text().splitlines():
        key = line.partition("=")[0].strip()
        if not line.lstrip().startswith(("#", "!")) and key in values:
            continue
        kept.append(line)
    kept.append(f"# {note} (scripts/ops/properties.py write_config)")
    kept += [f"{key}={escape_property(value)}" for key, value in values.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(kept) + "\n")
    return path


# Keys of config.properties given fresh values by ``write_private_config``.
PORT_KEYS = (
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_port",
    "grpc_management_port",
    "initial_worker_port",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_private_config(
    path: Path, overrides: Mapping[str, str] | None = None, base: Path = CONFIG
) -> dict[str, int]:
    """Write ``base`` with free ports for all five listeners and the worker, and ``overrides``.

    For a second TorchServe beside ``make run`` (tests, the benchmark); everything else (limits,
    token auth, allowed_urls, blacklist) stays as ``make run`` has it unless overridden.

    Returns:
        The ports given, by config key (PORT_KEYS).
    """
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS)), strict=True))
    values = {
        "inference_address": f"http://127.0.0.1:{ports['inference_address']}",
        "management_address": f"http://127.0.0.1:{ports['management_address']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics_address']}",
        "grpc_inference_port": str(ports["grpc_inference_port"]),
        "grpc_management_port": str(ports["grpc_management_port"]),
        "initial_worker_port": str(ports["initial_worker_port"]),
        **(overrides or {}),
    }
    write_config(path, values, base=base, note="private overrides")
    return ports
