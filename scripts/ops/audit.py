"""Supply-chain report for the serving path (RELIABILITY.md S6), as CI runs it (``make audit``).

1. The Netty inside TorchServe's frontend: read from ``META-INF/io.netty.versions.properties`` in
   the installed ``ts`` package's ``frontend/model-server.jar``, and printed. TorchServe is
   archived at 0.12.0 and its jar bundles Netty 4.1.53.Final (2020), which has known CVEs that
   nothing can patch here; it is contained by listening on loopback only, which this checks in
   ``config.properties`` (any other address fails).
2. ``pip-audit`` over the serving path's Python packages: ``image-enhancer``'s own dependencies,
   without the test, training and Triton extras, and theirs, pinned at the versions installed in
   this environment. A known vulnerability fails, unless ``IGNORED`` lists it with the reason it
   does not apply. When the advisory service cannot be reached (no network), it says so and does
   not fail: that is not a finding.

    .venv/bin/python -m scripts.ops.audit          # exit 0: clean (or not reachable); 1: found
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.ops.paths import REPO
from scripts.ops.properties import read_properties

PROJECT = "image-enhancer"
# Advisories that do not apply to the serving path, each with the reason. Keep it short and dated;
# an entry goes when the package is upgraded past it.
#   "GHSA-xxxx-xxxx-xxxx": "why it does not reach this service (YYYY-MM-DD)",
IGNORED: dict[str, str] = {}
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_KEYS = ("grpc_inference_address", "grpc_management_address")
# What pip-audit (requests, urllib3) says when PyPI's advisory service cannot be reached.
_NETWORK = re.compile(
    r"ConnectionError|Max retries exceeded|Failed to establish|Name or service not known|"
    r"Temporary failure in name resolution|timed out|Network is unreachable|ProxyError|SSLError",
    re.IGNORECASE,
)


def netty_versions() -> dict[str, str]:
    """The Netty modules bundled in TorchServe's frontend jar, by name: version."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the ts package (torchserve) is not installed")
    jar = Path(list(spec.submodule_search_locations)[0]) / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as archive:
        text = archive.read("META-INF/io.netty.versions.properties").decode()
    return dict(re.findall(r"^(netty-[\w-]+)\.version=(\S+)$", text, re.MULTILINE))


def non_loopback(config: Path) -> list[str]:
    """The ``key=value`` lines of config.properties that listen beyond 127.0.0.1."""
    props = read_properties(config)
    wrong = []
    for key in ADDRESS_KEYS + GRPC_KEYS:
        value = props.get(key, "")
        host = urlparse(value).hostname if "://" in value else value
        if host != "127.0.0.1":
            wrong.append(f"{key}={value}")
    return wrong


def serving_packages(project: str = PROJECT) -> dict[str, str]:
    """The installed distributions the project needs without extras, recursively: name: version."""
    found: dict[str, str] = {}
    todo = [(project, "")]
    while todo:
        name, extra = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # optional on this platform, or not installed: nothing to audit
        key = canonicalize_name(dist.metadata["Name"])
        if key in found and not extra:
            continue
        found[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            todo.append((requirement.name, ""))
            todo.extend((requirement.name, wanted) for wanted in requirement.extras)
    found.pop(canonicalize_name(project), None)  # ours, not on PyPI
    return found


def pip_audit(packages: dict[str, str]) -> tuple[str, list[str]]:
    """Run pip-audit on ``packages``: ("clean" | "found" | "unreachable" | "error", lines)."""
    with tempfile.TemporaryDirectory() as folder:
        requirements = Path(folder) / "serving.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())))
        command = [
            sys.executable, "-m", "pip_audit", "--requirement", str(requirements),
            "--no-deps", "--disable-pip", "--format", "json", "--progress-spinner", "off",
            "--timeout", "30",
        ]  # fmt: skip
        for advisory in IGNORED:
            command += ["--ignore-vuln", advisory]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    if report is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        kind = "unreachable" if _NETWORK.search(done.stderr or "") else "error"
        return kind, tail
    dependencies = report.get("dependencies", [])
    lines = []
    for dependency in dependencies:
        for vuln in dependency.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
            lines.append(
                f"{dependency['name']} {dependency.get('version')}: {vuln['id']} "
                f"({', '.join(vuln.get('aliases') or []) or 'no alias'}; fixed in {fixed})"
            )
    skipped = sorted(d["name"] for d in dependencies if d.get("skip_reason"))
    if any(dependency.get("vulns") for dependency in dependencies):
        return "found", lines
    if dependencies and len(skipped) == len(dependencies):
        # Every lookup failed: offline, or behind a mirror without PyPI's JSON API.
        return "unreachable", [f"none of {len(skipped)} packages could be looked up on PyPI"]
    if skipped:
        lines.append(f"not audited (not found on PyPI): {', '.join(skipped)}")
    return "clean", lines


def main(argv: list[str] | None = None) -> int:
    modules = netty_versions()
    tcnative = {v for name, v in modules.items() if name.startswith("netty-tcnative")}
    netty = sorted({v for name, v in modules.items() if not name.startswith("netty-tcnative")})
    print(
        f"audit: TorchServe's frontend (model-server.jar) bundles Netty {', '.join(netty)}"
        + (f" (netty-tcnative {', '.join(sorted(tcnative))})" if tcnative else "")
    )
    wrong = non_loopback(REPO / "config.properties")
    if wrong:
        print(f"audit: FAIL: config.properties listens beyond loopback: {'; '.join(wrong)}")
        return 1
    print("audit: config.properties binds TorchServe's listeners to 127.0.0.1 only")
    packages = serving_packages()
    print(f"audit: pip-audit over {len(packages)} packages of the serving path")
    for reason in IGNORED.items():
        print(f"audit: ignored {reason[0]}: {reason[1]}")
    kind, lines = pip_audit(packages)
    for line in lines:
        print(f"audit:   {line}")
    if kind == "clean":
        print("audit: no known vulnerability in the serving path")
        return 0
    if kind == "found":
        print("audit: FAIL: known vulnerabilities in the serving path (above); upgrade, or list "
              "them in scripts/ops/audit.py IGNORED with the reason they do not apply")  # fmt: skip
        return 1
    if kind == "unreachable":
        print("audit: WARNING: the advisory service (PyPI) could not be reached; the Python "
              "dependencies were NOT checked this time")  # fmt: skip
        return 0
    print("audit: FAIL: pip-audit did not run")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
