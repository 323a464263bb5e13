"""The Dockerfile, read statically: no Docker engine runs here, so drift is caught by reading it.

It must build with the commands CI runs (Makefile targets and repository scripts, nothing typed
inline), install dependencies before copying code, archive the model after, run as a non-root user,
have a health check, offer CPU and CUDA bases through one build argument, and leave out of its
context what is built or run locally. The container entrypoint changes exactly one TorchServe
setting (the inference address) and nothing else.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
WORKDIR = "/app"
# Commands that build or install software: they belong in a script or Makefile target, where CI
# runs them too, never inline in the Dockerfile.
INLINE_BUILD = ("pip ", "pip3 ", "apt-get", "apt ", "torch-model-archiver", "torchserve ", "curl ",
                "wget ", "git ")  # fmt: skip
# The only inline commands allowed: file ownership and folders for the service user.
HOUSEKEEPING = ("install -d", "chown", "mkdir")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    result, buffer, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        buffer += (" " if buffer else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, args = buffer.partition(" ")
            result.append(Instruction(keyword.upper(), args.strip(), start))
            buffer = ""
    return result


def makefile_targets() -> dict[str, list[str]]:
    """Makefile target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if match and not line.startswith("\t"):
            current = match.group(1)
            targets.setdefault(current, [])
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None if not line.startswith("\t") else current
    return targets


def makefile_targets_deps() -> dict[str, list[str]]:
    """Makefile target -> the targets it depends on."""
    deps: dict[str, list[str]] = {}
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+):(?!=)(.*)$", line)
        if match and not line.startswith("\t"):
            deps[match.group(1)] = match.group(2).split()
    return deps


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions()


def runs(parsed: list[Instruction]) -> list[Instruction]:
    return [i for i in parsed if i.keyword == "RUN"]


def index_of(parsed: list[Instruction], predicate) -> int:
    matches = [n for n, i in enumerate(parsed) if predicate(i)]
    assert matches, "instruction not found"
    return matches[0]


# -- variants ----------------------------------------------------------------------------------


def test_cpu_and_cuda_bases_by_one_build_argument(parsed):
    froms = [i for i in parsed if i.keyword == "FROM"]
    args_before = [i.args for i in parsed[: index_of(parsed, lambda i: i.keyword == "FROM")]]
    assert any(re.fullmatch(r"VARIANT=cpu", a) for a in args_before), "ARG VARIANT=cpu first"
    stages = {f.args.split()[-1]: f.args.split()[0] for f in froms if " AS " in f.args.upper()}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stages["base-cpu"]), stages
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", stages["base-cuda"]), stages
    assert froms[-1].args == "base-${VARIANT}"
    docker_cuda = " ".join(makefile_targets()["docker-cuda"])
    assert "--build-arg VARIANT=cuda" in docker_cuda


# -- the build uses what CI uses -----------------------------------------------------------------


def test_every_run_calls_a_make_target_or_a_repository_script(parsed):
    targets = makefile_targets()
    for run in runs(parsed):
        text = run.args
        for word in INLINE_BUILD:
            assert word not in f"{text} ", f"line {run.line}: '{word.strip()}' inline; use a script"
        made = re.findall(r"\bmake\s+([\w.-]+)", text)
        for target in made:
            assert target in targets, f"line {run.line}: no Makefile target '{target}'"
        scripts = [
            w
            for w in shlex.split(text.replace(";", " ; "))
            if re.match(r"^[\w.-]+/[\w./-]+\.(sh|py)$", w)
        ]
        for script in scripts:
            assert (REPO / script).is_file(), f"line {run.line}: {script} is not in the repository"
        housekeeping = text.startswith(HOUSEKEEPING)
        assert made or scripts or housekeeping, (
            f"line {run.line}: builds without a target or script"
        )


def test_dependency_step_is_the_make_setup_recipe(parsed):
    """The deps layer runs what `make setup` runs, so CI's install and the image's are one."""
    (recipe,) = makefile_targets()["setup"]
    assert any(recipe in run.args for run in runs(parsed)), f"no RUN of `{recipe}`"


def test_dependencies_are_installed_before_the_code_is_copied(parsed):
    (recipe,) = makefile_targets()["setup"]
    setup = index_of(parsed, lambda i: i.keyword == "RUN" and recipe in i.args)
    code = index_of(parsed, lambda i: i.keyword == "COPY" and i.args.split()[:2] == [".", "."])
    assert setup < code
    # no package file: scripts/setup.sh registers the packages once the code is in (make archive)
    allowed = {"pyproject.toml", "README.md", "scripts/setup.sh",
               "deploy/docker/system-packages.sh", "Makefile"}  # fmt: skip
    for copy in parsed[:code]:
        if copy.keyword == "COPY":
            sources = [w for w in copy.args.split()[:-1] if not w.startswith("--")]
            assert set(sources) <= allowed, (
                f"line {copy.line}: copies code before the deps: {sources}"
            )
            for source in sources:
                assert (REPO / source).exists(), source
    archive = index_of(parsed, lambda i: i.keyword == "RUN" and "make archive" in i.args)
    assert archive > code, "the model is archived from the copied code"
    assert "setup" in makefile_targets_deps()["archive"], "make archive registers the packages"


def test_runs_as_a_non_root_user_the_image_creates(parsed):
    users = [(n, i) for n, i in enumerate(parsed) if i.keyword == "USER"]
    assert users, "no USER"
    position, last = users[-1]
    uid = last.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        "numeric non-root uid (Kubernetes runAsNonRoot checks it)"
    )
    created = (REPO / "deploy/docker/system-packages.sh").read_text()
    assert f"--uid {uid}" in created
    entry = index_of(parsed, lambda i: i.keyword == "ENTRYPOINT")
    assert position < entry


def test_health_check_and_entrypoint(parsed):
    (health,) = [i for i in parsed if i.keyword == "HEALTHCHECK"]
    assert "entrypoint.py" in health.args and '"health"' in health.args
    assert "--start-period" in health.args
    (entry,) = [i for i in parsed if i.keyword == "ENTRYPOINT"]
    assert "tini" in entry.args and "/app/deploy/docker/entrypoint.py" in entry.args
    assert (REPO / "deploy/docker/entrypoint.py").is_file()
    (cmd,) = [i for i in parsed if i.keyword == "CMD"]
    assert cmd.args == '["serve"]'
    exposed = {p for i in parsed if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {"8080", "5000"} <= exposed


def test_java_package_is_the_one_serve_checks_for():
    from scripts.ops import torchserve

    assert torchserve.JAVA_PACKAGE in (REPO / "deploy/docker/system-packages.sh").read_text()


# -- build context -------------------------------------------------------------------------------


def ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(part, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix, part in zip(prefixes, parts, strict=True)
    )


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/HEAD", "model_store/enhancer.mar", ".run/key_file.json",
             "runs/x/enhancer.pt", "handlers/enhancer/__pycache__/engine.cpython-311.pyc",
             "tests/test_x.py"],
)  # fmt: skip
def test_context_leaves_out_local_state(path):
    assert ignored(path)


@pytest.mark.parametrize(
    "path", ["model_store/enhancer.pt", "model_store/enhancer.json", "handlers/enhancer/engine.py",
             "handlers/enhancer/imaging/decode.py", "handlers/model-config.yaml",
             "config.properties", "scripts/setup.sh", "Makefile", "frontend/__init__.py",
             "scripts/ops/container.py", "deploy/docker/entrypoint.py", "pyproject.toml",
             "README.md"],
)  # fmt: skip
def test_context_keeps_what_the_build_needs(path):
    assert not ignored(path)


# -- the entrypoint's one change to TorchServe's config -------------------------------------------


def test_container_config_changes_only_the_inference_address(tmp_path, monkeypatch):
    from scripts.ops import container as entrypoint

    monkeypatch.setattr(entrypoint, "CONTAINER_CONFIG", tmp_path / "container.properties")
    written = entrypoint.write_container_config("http://0.0.0.0:8080")
    from scripts.ops.paths import CONFIG
    from scripts.ops.properties import read_properties

    original = read_properties(CONFIG)
    container = read_properties(written)
    assert container.pop("inference_address") == "http://0.0.0.0:8080"
    assert original.pop("inference_address").endswith(":8080"), "the port the image publishes"
    assert container == original
    for key in ("management_address", "metrics_address"):
        assert "127.0.0.1" in container[key], key
    assert container.get("disable_token_authorization", "false") == "false"


def test_entrypoint_reads_the_triton_port_as_argparse_does():
    from scripts.ops import container as entrypoint

    assert entrypoint.http_port([], 8000) == 8000
    assert entrypoint.http_port(["--http-port=9000"], 8000) == 9000
    assert entrypoint.http_port(["--http-port", "9001", "--grpc-port=9002"], 8000) == 9001
    assert entrypoint.http_port(["--http-port=1", "--http-port", "2"], 8000) == 2


def test_health_is_unhealthy_before_anything_started(tmp_path, monkeypatch):
    from scripts.ops import container as entrypoint

    monkeypatch.setattr(entrypoint, "MODE_FILE", tmp_path / "container.json")
    assert entrypoint.health() == 1
    (tmp_path / "container.json").write_text('{"mode": "triton", "http_port": 9}')
    assert entrypoint.health() == 1  # nothing listens on port 9


@pytest.mark.parametrize(
    ("body", "ready"),
    [
        ('[{"modelName": "enhancer", "workers": [{"id": "9000", "status": "READY"}]}]', True),
        ('[{"modelName": "enhancer", "workers": [{"id": "9000", "status": "UNLOADING"}]}]', False),
        ('[{"modelName": "enhancer", "workers": []}]', False),
        ("not json", False),
    ],
)
def test_kserve_readiness_wants_a_ready_worker(body, ready):
    """The KServe pod's readiness probe reads the management API, as TorchServe's /ping cannot."""
    import http.server
    import threading

    from scripts.ops import container as entrypoint

    class Management(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            code = 200 if self.path == "/models/enhancer" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Management)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert entrypoint.worker_ready(url) is ready
    finally:
        server.shutdown()
        server.server_close()
    assert entrypoint.worker_ready(url) is False, "nothing listening is not ready"
