"""``python -m scripts.serve`` without a server: the checks that run before TorchServe, and its
command line.

A missing Java or model must stop ``make run`` at once with what to do, never start a server that
would hang requests. The commands that need a running server are covered by test_torchserve_e2e.py
(``start_torchserve`` runs the same ``launch``, ``wait_ready`` and ``stop``).
"""

from __future__ import annotations

import stat
import subprocess

import pytest

from scripts import serve as serve_cli
from scripts.ops import archive
from scripts.ops import torchserve as serve


def fake_java(folder, version_line: str):
    """A JAVA_HOME whose bin/java prints ``version_line`` the way ``java -version`` does."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return folder


def test_missing_java_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java-here"))
    with pytest.raises(serve.ServeError, match="apt-get install openjdk-17-jre-headless"):
        serve.check_java()


@pytest.mark.parametrize(
    "line", ['openjdk version "11.0.22" 2024-01-16', 'java version "1.8.0_401"']
)
def test_old_java_is_refused(tmp_path, monkeypatch, line):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, line)))
    with pytest.raises(serve.ServeError, match="needs Java 17 or newer"):
        serve.check_java()


@pytest.mark.parametrize(
    "line", ['openjdk version "17.0.15" 2025-04-15', 'openjdk version "21" 2023-09-19']
)
def test_java_17_or_newer_passes(tmp_path, monkeypatch, line):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, line)))
    assert serve.check_java() == line


@pytest.fixture
def private_run(tmp_path, monkeypatch):
    """Point the run folder away from the repository's .run/ (someone may be running make run)."""
    monkeypatch.setattr(serve, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


def test_start_without_java_stops_before_anything_starts(
    tmp_path, monkeypatch, private_run, capsys
):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java-here"))
    launched = []
    monkeypatch.setattr(serve, "launch", lambda *args: launched.append(args))
    assert serve_cli.main(["start"]) == 1
    assert "openjdk-17-jre-headless" in capsys.readouterr().err
    assert launched == []


def test_start_without_a_model_says_how_to_make_one(tmp_path, private_run, capsys, monkeypatch):
    launched = []
    monkeypatch.setattr(serve, "launch", lambda *args: launched.append(args))
    assert serve_cli.main(["start", "--model", str(tmp_path / "enhancer.pt")]) == 1
    err = capsys.readouterr().err
    assert "no model to serve" in err
    assert "make train && make export" in err
    assert "--model" in err
    assert launched == []


def test_start_refuses_a_damaged_archive_rather_than_rebuilding_it(
    tmp_path, private_run, capsys, monkeypatch, sr_model
):
    """One flipped byte in model_store/enhancer.mar: `serve start` says it is damaged, at once."""
    store = tmp_path / "store"
    monkeypatch.setattr(serve, "MODEL_STORE", store)
    mar = archive.build_archive(sr_model, export_path=store)
    data = bytearray(mar.read_bytes())
    data[len(data) // 3] ^= 0x10
    mar.write_bytes(bytes(data))
    launched = []
    monkeypatch.setattr(serve, "launch", lambda *args, **kwargs: launched.append(args))
    assert serve_cli.main(["start", "--model", str(sr_model)]) == 1
    err = capsys.readouterr().err
    assert "enhancer.mar is damaged: its sha256 is" in err
    assert "scripts.archive --force" in err
    assert launched == []
    assert mar.read_bytes() == bytes(data)  # reported, not silently rebuilt


def test_launch_refuses_a_missing_or_damaged_archive(tmp_path):
    instance = serve.Instance.from_config(tmp_path / "run", serve.CONFIG)
    (tmp_path / "enhancer.mar").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(serve.ServeError, match="enhancer.mar is damaged"):
        serve.launch(instance, serve.CONFIG, tmp_path, "enhancer=enhancer.mar")


def test_launch_keeps_the_security_defaults(tmp_path, monkeypatch):
    """The start command never turns token auth off or the model API on."""
    seen = []

    def fake_run(command, **kwargs):
        seen.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(serve.subprocess, "run", fake_run)
    instance = serve.Instance.from_config(tmp_path / "run", serve.CONFIG)
    serve.launch(instance, serve.CONFIG, tmp_path, "enhancer=enhancer.mar", verify=False)
    ((command, kwargs),) = seen
    assert command[1:] == [
        "--start",
        "--ts-config",
        str(serve.CONFIG),
        "--model-store",
        str(tmp_path),
        "--models",
        "enhancer=enhancer.mar",
        "--ncs",
    ]
    assert not {"--dt", "--disable-token-auth", "--enable-model-api"} & set(command)
    assert kwargs["cwd"] == tmp_path / "run"
    # a private temp folder: the pid file (TMPDIR) and the worker sockets (TEMP -> java.io.tmpdir)
    assert kwargs["env"]["TMPDIR"] == kwargs["env"]["TEMP"] == str(tmp_path / "run" / "tmp")


def test_status_and_stop_when_not_running(private_run, capsys):
    assert serve_cli.main(["status"]) == 1
    assert "not running" in capsys.readouterr().out
    assert serve_cli.main(["stop"]) == 0
    assert "not running" in capsys.readouterr().out


def test_key_without_a_server_is_a_clear_error(private_run, capsys):
    assert serve_cli.main(["key"]) == 1
    assert "no key file" in capsys.readouterr().err


def test_load_error_is_read_from_the_worker_log(tmp_path):
    instance = serve.Instance(
        tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
    )
    instance.logdir.mkdir()
    log = instance.logdir / "model_log.log"
    log.write_text(
        "2026 [INFO ] W-9000-enhancer_1-stdout MODEL_LOG - CPU inference with 2 threads\n"
    )
    assert instance.load_error() is None
    log.write_text(
        log.read_text()
        + "2026 [INFO ] W-9000-enhancer_1-stdout MODEL_LOG - Backend worker process died.\n"
        + "2026 [INFO ] W-9000-enhancer_1-stdout MODEL_LOG - Traceback (most recent call last):\n"
        + "2026 [INFO ] W-9000-enhancer_1-stdout MODEL_LOG - "
        + "ValueError: model card: missing field 'tile'\n"
    )
    assert instance.load_error() == "ValueError: model card: missing field 'tile'"


class _LoadingInstance:
    """Stands in for a starting TorchServe whose worker dies; its error line arrives late."""

    model_name = "enhancer"

    def __init__(self, errors):
        self.errors = list(errors)

    def pid(self):
        return 1

    def ready(self):
        return False

    def load_error(self):
        return self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]

    def log_tail(self):
        return "(log)"


def test_wait_ready_waits_for_the_workers_error_line():
    late = _LoadingInstance([None, serve._DIED, serve._DIED, "ValueError: bad card"])
    with pytest.raises(
        serve.ServeError, match="cannot load model 'enhancer': ValueError: bad card"
    ):
        serve.wait_ready(late, timeout=60)


def test_wait_ready_reports_a_death_without_error_line_after_the_grace(monkeypatch):
    monkeypatch.setattr(serve, "_ERROR_LINE_GRACE_S", 0.5)
    with pytest.raises(serve.ServeError, match="worker died while loading"):
        serve.wait_ready(_LoadingInstance([serve._DIED]), timeout=60)


def test_run_dir_and_config_choose_another_torchserve(tmp_path, capsys):
    where = ["--run-dir", str(tmp_path / "elsewhere"), "--config", str(serve.CONFIG)]
    assert serve_cli.main([*where, "status"]) == 1
    assert str(tmp_path / "elsewhere") in capsys.readouterr().out
