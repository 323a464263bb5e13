"""deploy/: the KServe and Triton manifests agree with the configs the service is tested with.

No cluster runs here, so the manifests are parsed (pyyaml) and cross-checked: timeouts line up
from the handler to the ingress, ports and paths match between the runtime, its config and the
storage layout, limits are the repository's, GPU replicas never scale to zero, and token
authorization is only off where every TorchServe port stays on the pod's loopback.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from enhancer.contract import MODEL_NAME
from scripts.ops import paths, properties

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"

KSERVE_CONFIG = DEPLOY / "kserve" / "config" / "config.properties"
# Keys allowed to differ from the repository's config.properties, and why they must.
POD_KEYS = {
    "disable_token_authorization",  # per-pod keys cannot work behind a load balancer
    "token_expiration_min",  # meaningless without token auth
    "allowed_urls",  # the bundle's path instead of the repository's
    "model_store",  # where KServe mounts the bundle
    "load_models",  # no `--models` on the runtime's command line
}
KNATIVE_MAX_REVISION_TIMEOUT = 600  # config-defaults max-revision-timeout-seconds, by default


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path, kind: str) -> dict:
    (found,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def repo_config() -> dict[str, str]:
    return properties.read_properties(paths.CONFIG)


@pytest.fixture(scope="module")
def pod_config() -> dict[str, str]:
    return properties.read_properties(KSERVE_CONFIG)


@pytest.fixture(scope="module")
def model_config() -> dict:
    return yaml.safe_load((REPO / "handlers" / "model-config.yaml").read_text())


@pytest.fixture(scope="module")
def runtime() -> dict:
    return one(DEPLOY / "kserve" / "servingruntime.yaml", "ServingRuntime")


@pytest.fixture(scope="module", params=["inferenceservice-cpu.yaml", "inferenceservice-gpu.yaml"])
def isvc(request) -> dict:
    return one(DEPLOY / "kserve" / request.param, "InferenceService")


def port_of(address: str) -> int:
    return urlparse(address).port


def memory_gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


# -- the KServe bundle's config.properties --------------------------------------------------------


def test_pod_config_keeps_the_repository_limits(repo_config, pod_config):
    for key, value in repo_config.items():
        if key in POD_KEYS:
            continue
        assert pod_config.get(key) == value, f"{key}: {pod_config.get(key)!r} != {value!r}"
    assert set(pod_config) - set(repo_config) <= POD_KEYS


def test_token_auth_is_off_only_with_every_port_on_loopback(pod_config):
    assert pod_config["disable_token_authorization"] == "true"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlparse(pod_config[key]).hostname == "127.0.0.1", key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert pod_config[key] == "127.0.0.1", key
    assert pod_config["enable_model_api"] == "false"


def test_pod_config_loads_the_bundles_archive(pod_config):
    archive = f"{MODEL_NAME}.mar"
    assert pod_config["model_store"] == "/mnt/models/model-store"
    assert pod_config["load_models"] == f"{MODEL_NAME}={archive}"
    # allowed_urls is a Java regex over file URLs: the bundle's archive, and nothing elsewhere
    pattern = pod_config["allowed_urls"]
    assert re.fullmatch(pattern, f"file://{pod_config['model_store']}/{archive}")
    assert not re.fullmatch(pattern, "file:///tmp/evil.mar")
    assert not re.fullmatch(pattern, "https://example.com/model-store/enhancer.mar")


# -- the ServingRuntime ----------------------------------------------------------------------------


def test_runtime_reads_the_layout_the_config_names(runtime, pod_config):
    (container,) = runtime["spec"]["containers"]
    args = container["args"]
    assert "--ts-config=/mnt/models/config/config.properties" in args
    assert f"--model-store={pod_config['model_store']}" in args
    assert "--foreground" in args, "the container lives as long as TorchServe"
    assert KSERVE_CONFIG.relative_to(DEPLOY / "kserve").as_posix() == "config/config.properties"


def test_runtime_port_and_probes_are_torchserves(runtime, pod_config):
    (container,) = runtime["spec"]["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == port_of(pod_config["inference_address"])
    # readiness: a READY worker on the management API the config names (not /ping, which
    # answers 200 before the model is loaded)
    command = container["readinessProbe"]["exec"]["command"]
    assert command[1:3] == ["/app/deploy/docker/entrypoint.py", "ready"]
    assert (REPO / "deploy/docker/entrypoint.py").is_file()
    assert command[3] == pod_config["management_address"]
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness == {"path": "/ping", "port": port["containerPort"]}
    # no restart while a model loads: liveness waits out TorchServe's startup timeout
    assert container["livenessProbe"]["initialDelaySeconds"] >= int(
        pod_config["default_startup_timeout"]
    )


def test_runtime_runs_as_the_images_user(runtime):
    (container,) = runtime["spec"]["containers"]
    dockerfile = (REPO / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    assert container["securityContext"]["runAsUser"] == int(uid)
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["command"][0] == "/usr/bin/tini" and "/usr/bin/tini" in dockerfile
    assert container["args"][0].startswith("/app/.venv/bin/")


def test_runtime_image_tags_are_the_ones_make_builds(runtime, isvc):
    image = runtime["spec"]["containers"][0]["image"]
    repository, tag = image.rsplit(":", 1)
    makefile = (REPO / "Makefile").read_text()
    name = re.search(r"^IMAGE \?= (\S+)", makefile, re.MULTILINE).group(1)
    assert repository.endswith(f"/{name}")
    version = isvc["spec"]["predictor"]["model"]["runtimeVersion"]
    assert f"$(IMAGE):{version}" in makefile and tag in ("cpu", "cuda")


# -- the InferenceServices -----------------------------------------------------------------------


def test_timeouts_line_up_from_handler_to_ingress(isvc, pod_config, model_config):
    predictor = isvc["spec"]["predictor"]
    handler_timeout = model_config["responseTimeout"]
    assert int(pod_config["default_response_timeout"]) == handler_timeout
    # the revision (and the Istio routes Knative writes) must outlast TorchServe's own timeout, so
    # a slow request ends with TorchServe's answer, not a gateway's 504
    assert predictor["timeout"] >= handler_timeout + 10
    assert predictor["timeout"] <= KNATIVE_MAX_REVISION_TIMEOUT
    text = (DEPLOY / "README.md").read_text()
    assert f"{predictor['timeout']} s" in text, "deploy/README.md states the ingress timeout"


def test_concurrency_matches_batching_and_queue(isvc, pod_config, model_config):
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == model_config["batchSize"]
    assert predictor["containerConcurrency"] == model_config["batchSize"] + int(
        pod_config["job_queue_size"]
    )


def test_replicas_never_scale_to_zero(isvc):
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] >= 1
    assert predictor["maxReplicas"] >= predictor["minReplicas"]


def test_gpu_service_asks_for_a_gpu_and_cpu_does_not(isvc):
    model = isvc["spec"]["predictor"]["model"]
    limits = model["resources"]["limits"]
    if model["runtimeVersion"] == "cuda":
        assert limits["nvidia.com/gpu"] == "1"
        assert model["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert isvc["spec"]["predictor"]["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits


def test_memory_fits_the_jvm_heap_and_a_worker(isvc, pod_config):
    heap = re.search(r"-Xmx(\d+)g", pod_config["vmargs"]).group(1)
    limits = isvc["spec"]["predictor"]["model"]["resources"]["limits"]
    assert memory_gib(limits["memory"]) >= int(heap) + 2


def test_isvc_uses_the_runtime(isvc, runtime):
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].rstrip("/").endswith("/enhancer")


# -- Triton ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_docs() -> dict:
    path = DEPLOY / "triton" / "deployment.yaml"
    return {"Deployment": one(path, "Deployment"), "Service": one(path, "Service")}


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_triton_container_runs_the_binding_on_its_declared_ports(triton_docs):
    (container,) = triton_docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "triton", "the image's entrypoint command that starts scripts.triton_serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "http": int(flag(args, "http-port")),
        "grpc": int(flag(args, "grpc-port")),
        "metrics": int(flag(args, "metrics-port")),
    }
    assert int(flag(args, "max-batch-size")) >= 1
    model = MODEL_NAME
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{model}/ready"
    assert container["startupProbe"]["httpGet"]["path"] == f"/v2/models/{model}/ready"


def test_triton_has_shared_memory_and_writable_scratch(triton_docs):
    spec = triton_docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and memory_gib(shm["sizeLimit"]) >= 1
    for path in ("/tmp", "/app/.run"):  # PyTriton's workspace; the entrypoint's state file
        assert path in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    # Triton waits up to 30 s for in-flight requests on SIGTERM
    assert spec["terminationGracePeriodSeconds"] > 30


def test_triton_service_targets_the_containers_ports(triton_docs):
    deployment, service = triton_docs["Deployment"], triton_docs["Service"]
    assert service["spec"]["type"] == "ClusterIP", "inside the cluster only"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == names


def test_triton_gpu_patch_fits_the_deployment(triton_docs):
    patch = yaml.safe_load((DEPLOY / "triton" / "gpu-patch.yaml").read_text())
    (patched,) = patch["spec"]["template"]["spec"]["containers"]
    (container,) = triton_docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert patched["name"] == container["name"], "a strategic merge patch matches by name"
    assert patched["image"].endswith(":cuda")
    assert patched["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert flag(patched["args"], "device") == "cuda"
    assert patched["args"][0] == "triton"


def test_deploy_readme_names_every_manifest():
    text = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*.yaml")) + [KSERVE_CONFIG]:
        assert path.relative_to(REPO).as_posix() in text, path
