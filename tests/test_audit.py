"""make audit (scripts/ops/audit.py): Netty's version from TorchServe's jar, loopback only, and
pip-audit's answers told apart (found, clean, advisory service unreachable). Hermetic: pip-audit
itself is imitated; CI's `make audit` runs the real one."""

from __future__ import annotations

import json
import subprocess

import pytest

from scripts.ops import audit
from scripts.ops.paths import REPO


def test_netty_version_is_read_from_the_torchserve_jar():
    versions = audit.netty_versions()
    assert versions["netty-codec-http"] == "4.1.53.Final"  # TorchServe 0.12.0, archived


def test_config_properties_binds_loopback_only(tmp_path):
    assert audit.non_loopback(REPO / "config.properties") == []
    bad = tmp_path / "config.properties"
    text = (REPO / "config.properties").read_text()
    bad.write_text(
        text.replace("inference_address=http://127.0.0.1", "inference_address=http://0.0.0.0")
    )
    assert audit.non_loopback(bad) == ["inference_address=http://0.0.0.0:8080"]


def test_the_serving_path_is_the_dependencies_without_extras():
    packages = audit.serving_packages()
    assert {"flask", "gunicorn", "gevent", "torchserve", "pillow", "werkzeug"} <= set(packages)
    assert {"pytest", "fastai", "nvidia-pytriton", "pip-audit", "image-enhancer"}.isdisjoint(
        packages
    )


def _pip_audit_answers(monkeypatch, stdout: str, stderr: str = "", code: int = 1):
    def run(command, **kwargs):
        assert "--no-deps" in command and "--disable-pip" in command
        return subprocess.CompletedProcess(command, code, stdout, stderr)

    monkeypatch.setattr(audit.subprocess, "run", run)


def _report(*dependencies):
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_a_known_vulnerability_fails(monkeypatch, capsys):
    vuln = {"id": "GHSA-xxxx", "fix_versions": ["3.1.10"], "aliases": ["CVE-2099-1"]}
    _pip_audit_answers(
        monkeypatch, _report({"name": "werkzeug", "version": "3.1.9", "vulns": [vuln]})
    )
    assert audit.main() == 1
    out = capsys.readouterr().out
    assert "Netty 4.1.53.Final" in out
    assert "werkzeug 3.1.9: GHSA-xxxx (CVE-2099-1; fixed in 3.1.10)" in out and "FAIL" in out


def test_clean_passes(monkeypatch, capsys):
    _pip_audit_answers(
        monkeypatch,
        _report(
            {"name": "flask", "version": "3.1.3", "vulns": []},
            {"name": "torch", "version": "9", "skip_reason": "Dependency not found on PyPI"},
        ),
        code=0,
    )
    assert audit.main() == 0
    out = capsys.readouterr().out
    assert "no known vulnerability" in out and "not audited (not found on PyPI): torch" in out


@pytest.mark.parametrize(
    "stdout, stderr",
    [
        (
            "",
            "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org'): "
            "Max retries exceeded",
        ),  # fmt: skip
        (_report({"name": "flask", "version": "3.1.3", "skip_reason": "not found on PyPI"}), ""),
    ],
    ids=["connection-error", "nothing-looked-up"],
)
def test_an_unreachable_advisory_service_warns_and_passes(monkeypatch, capsys, stdout, stderr):
    _pip_audit_answers(monkeypatch, stdout, stderr)
    assert audit.main() == 0
    assert "NOT checked" in capsys.readouterr().out


def test_pip_audit_that_does_not_run_fails(monkeypatch):
    _pip_audit_answers(monkeypatch, "", "No module named pip_audit")
    assert audit.main() == 1
