"""The Triton binding's request/response mapping, without a server (enhancer.serving.triton).

The inference callable is called the way PyTriton calls it: a list of PyTriton ``Request`` objects
whose inputs are [rows, 1] object arrays of bytes. What must hold:
- each row gets exactly the bytes the engine itself produces for the same image and options (the
  binding adds no processing of its own), with the declared dtypes and shapes;
- every row carries its own status and TorchServe's JSON error body, so a bad upload never fails
  the good ones batched beside it (PyTriton 0.7.0 fails a whole batch on an exception);
- the Triton-only wire format (the ``options`` JSON) is refused with 400s that say what is wrong;
- batching, queue and size limits come from the files TorchServe reads; the libpython fix-up puts
  this interpreter's LIBDIR first and leaves a correct environment alone.
"""

from __future__ import annotations

import ast
import io
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from enhancer.serving import triton as adapter
from scripts.ops import serving as serving_ops
from scripts.ops import triton as triton_ops
from scripts.ops.paths import CONFIG, MODEL_CONFIG
from tests.helpers.images import encode, photo_array, webp_ending_in_nul

pytestmark = pytest.mark.triton
pytriton_types = pytest.importorskip("pytriton.proxy.types", reason="needs the triton extra")


def column(*values: object) -> np.ndarray:
    """A [n, 1] BYTES tensor as PyTriton hands it over (object dtype)."""
    array = np.empty((len(values), 1), dtype=np.object_)
    for i, value in enumerate(values):
        array[i, 0] = value
    return array


def request(*images: bytes, options: list[object] | None = None):
    data = {"image": column(*images)}
    if options is not None:
        data["options"] = column(
            *[o if isinstance(o, bytes) else json.dumps(o).encode() for o in options]
        )
    return pytriton_types.Request(data=data)


def photo(width: int = 40, height: int = 30, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    return encode(Image.fromarray(photo_array(width, height)).convert(mode), fmt)


@pytest.fixture(scope="module")
def infer(sr_model):
    from enhancer.engine import Enhancer

    return adapter.make_infer_func(Enhancer.load(sr_model), max_image_bytes=1_000_000)


@pytest.fixture(scope="module")
def engine(sr_model):
    """A second engine on the same model: the reference the binding's bytes must equal."""
    from enhancer.engine import Enhancer

    return Enhancer.load(sr_model)


def row(outputs: dict, i: int = 0) -> dict:
    """One row's outputs as plain Python values."""
    error = bytes(outputs["error"][i, 0])
    return {
        "image": bytes(outputs["image"][i, 0]),
        "content_type": bytes(outputs["content_type"][i, 0]).decode(),
        "width": int(outputs["width"][i, 0]),
        "height": int(outputs["height"][i, 0]),
        "status": int(outputs["status"][i, 0]),
        "error": json.loads(error) if error else None,
        "headers": json.loads(bytes(outputs["headers"][i, 0])),
    }


def assert_declared_shapes(outputs: dict, rows: int) -> None:
    """Every declared output, [rows, 1], BYTES as object arrays and INT32 as int32."""
    _, declared = adapter.model_tensors()
    assert set(outputs) == {tensor.name for tensor in declared}
    for tensor in declared:
        value = outputs[tensor.name]
        assert value.shape == (rows, 1), tensor.name
        if tensor.dtype is np.bytes_:
            assert value.dtype == np.object_ and all(isinstance(v, bytes) for v in value.ravel())
        else:
            assert value.dtype == np.dtype(tensor.dtype), tensor.name


# -- good requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        None,
        {},
        {"scale": "4", "format": "webp"},
        {"scale": 3, "format": "jpeg", "quality": 80},
        {"scale": "1"},
        {"scale": 2.5, "strength": "0.5", "format": "png"},
        {"scale": "auto", "level": 2, "enhance_first": "true", "metadata": "strip"},
        {"scale": "1.5", "compare": "true", "metadata": "keep"},
    ],
)
def test_output_is_the_engines_own_bytes(infer, engine, options):
    data = photo(37, 23)
    (outputs,) = infer([request(data, options=None if options is None else [options])])
    assert_declared_shapes(outputs, 1)
    got = row(outputs)
    expected = engine.enhance(data, {k: str(v) for k, v in (options or {}).items()})
    assert got["status"] == 200 and got["error"] is None
    assert got["image"] == expected.data
    assert got["content_type"] == expected.content_type
    assert (got["width"], got["height"]) == (expected.width, expected.height)
    assert got["headers"] == expected.headers  # X-Enhance-Scale-Used, as TorchServe sends it
    with Image.open(io.BytesIO(got["image"])) as image:
        assert image.size == (expected.width, expected.height)


def test_rows_and_requests_of_a_batch_each_get_their_own_answer(infer):
    good = photo(20, 10)
    batch = [
        request(good, b"not an image at all", options=[{}, {}]),  # one request, two rows
        request(photo(8, 8, mode="RGBA"), options=[{"scale": "9"}]),
        request(photo(12, 6, mode="L"), options=[{"scale": "3", "format": "png"}]),
    ]
    first, second, third = infer(batch)
    assert_declared_shapes(first, 2)
    assert row(first, 0)["status"] == 200 and (row(first, 0)["width"], row(first, 0)["height"]) == (
        40,
        20,
    )
    bad = row(first, 1)
    assert bad["status"] == 400 and bad["image"] == b"" and bad["content_type"] == ""
    assert (bad["width"], bad["height"]) == (0, 0)
    assert bad["headers"] == {}
    assert bad["error"]["code"] == 400 and bad["error"]["type"] == "BadRequest"
    assert "not a readable image" in bad["error"]["message"]
    scale = row(second)
    assert scale["status"] == 400 and "scale" in scale["error"]["message"]
    gray = row(third)
    assert gray["status"] == 200
    with Image.open(io.BytesIO(gray["image"])) as image:
        assert image.size == (36, 18) and image.mode == "L"


def test_error_body_is_the_torchserve_body(infer, engine):
    """The ``error`` output holds exactly what the TorchServe adapter sends as its body."""
    from enhancer.errors import EnhanceError

    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    (outputs,) = infer([request(gif)])
    with pytest.raises(EnhanceError) as raised:
        engine.prepare(gif, {})
    assert bytes(outputs["error"][0, 0]) == raised.value.to_json()
    assert int(outputs["status"][0, 0]) == raised.value.status == 415


def test_out_of_memory_is_507_and_spares_the_others(infer, engine, monkeypatch, sr_model):
    """A 507 from the engine's run stage (after its own retries) stays on its row."""
    from enhancer.engine import Enhancer
    from enhancer.errors import OutOfMemory

    enhancer = Enhancer.load(sr_model)
    real_run = enhancer.run

    def run(jobs):
        real_run(jobs)
        jobs[0].error = OutOfMemory("out of memory on cuda even with 32-pixel tiles")

    monkeypatch.setattr(enhancer, "run", run)
    first, second = adapter.make_infer_func(enhancer)([request(photo()), request(photo())])
    assert row(first)["status"] == 507 and row(first)["error"]["type"] == "InsufficientStorage"
    assert row(second)["status"] == 200


def test_an_engine_fault_is_its_rows_500(sr_model, monkeypatch):
    """The engine turns an unexpected fault into InternalError for that request alone."""
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(sr_model)
    real_prepare = enhancer.prepare
    broken = photo(11, 11)

    def prepare(data, options):
        if data == broken:
            raise RuntimeError("a bug")
        return real_prepare(data, options)

    monkeypatch.setattr(enhancer, "prepare", prepare)
    first, second = adapter.make_infer_func(enhancer)([request(broken), request(photo())])
    assert row(first)["status"] == 500 and row(first)["error"]["type"] == "InternalServerError"
    assert "a bug" not in row(first)["error"]["message"], "no internals in the answer"
    assert row(second)["status"] == 200


def test_a_fault_outside_the_engine_propagates(sr_model, monkeypatch):
    """Should the engine itself raise, PyTriton fails that batch (500): nothing is hidden."""
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(sr_model)

    def broken(requests):
        raise RuntimeError("a bug")

    monkeypatch.setattr(enhancer, "enhance_batch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        adapter.make_infer_func(enhancer)([request(photo())])


def test_trailing_nul_bytes_survive(infer):
    """BYTES stay object arrays: numpy's fixed-width bytes (dtype S) drop trailing NULs."""
    data = webp_ending_in_nul()
    (outputs,) = infer([request(data)])
    assert row(outputs)["status"] == 200
    # the control: the same image through a fixed-width array loses its pad byte and is refused
    stripped = np.array([[data]], dtype=np.bytes_)
    (outputs,) = infer([pytriton_types.Request(data={"image": stripped})])
    assert row(outputs)["status"] == 400
    # and the output side keeps the NULs an encoder wrote
    assert adapter._column([b"ab\x00"], np.object_)[0, 0] == b"ab\x00"


# -- the options input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{scale: 4}", "is not a JSON object"),
        (b"\xff\xfe", "is not a JSON object"),
        (b'["scale", "4"]', "must be a JSON object"),
        (b'"4"', "must be a JSON object"),
        (b'{"scale": true}', "option 'scale': give a string or a number"),
        (b'{"format": null}', "option 'format': give a string or a number"),
        (b'{"scale": {"x": 1}}', "option 'scale': give a string or a number"),
    ],
)
def test_bad_options_json_is_a_400_that_says_why(infer, raw, words):
    (outputs,) = infer([request(photo(), options=[raw])])
    got = row(outputs)
    assert got["status"] == 400 and got["error"]["type"] == "BadRequest"
    assert words in got["error"]["message"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"colour": "red"}, "option 'colour': unknown option"),
        ({"scale": "9"}, "out of range"),
        ({"quality": 0}, "option 'quality'"),
        ({"format": "gif"}, "option 'format'"),
    ],
)
def test_option_validation_is_the_engines(infer, options, words):
    (outputs,) = infer([request(photo(), options=[options])])
    got = row(outputs)
    assert got["status"] == 400 and words in got["error"]["message"]


def test_empty_options_mean_the_defaults(infer):
    for raw in (b"", b"  ", b"{}"):
        (outputs,) = infer([request(photo(30, 20), options=[raw])])
        got = row(outputs)
        assert got["status"] == 200 and (got["width"], got["height"]) == (60, 40)
        assert got["content_type"] == "image/png"


def test_image_over_the_byte_limit_is_413(infer):
    big = photo(30, 20) + bytes(1_000_001)
    (outputs,) = infer([request(big)])
    got = row(outputs)
    assert got["status"] == 413 and "1,000,000 bytes" in got["error"]["message"]


def test_missing_image_is_400_per_row_not_a_batch_failure(infer):
    """Triton 2.51 passes a request holding only the optional input; it must not poison a batch."""
    only_options = pytriton_types.Request(data={"options": column(b"{}", b"{}")})
    first, second = infer([only_options, request(photo())])
    assert [row(first, i)["status"] for i in range(2)] == [400, 400]
    assert "input 'image' is missing" in row(first)["error"]["message"]
    assert row(second)["status"] == 200


def test_text_instead_of_bytes_is_400(infer):
    (outputs,) = infer([pytriton_types.Request(data={"image": column("a str")})])
    assert row(outputs)["status"] == 400


# -- configuration -----------------------------------------------------------------------------


def test_defaults_come_from_the_files_torchserve_reads(tmp_path):
    model_config = serving_ops.load_model_config()
    properties = tmp_path / "config.properties"
    properties.write_text("# comment\njob_queue_size=7\nmax_request_size=1234\n")
    got = serving_ops.serving_defaults(model_config, properties)
    assert got == {
        "max_batch_size": model_config["batchSize"],
        "delay_us": model_config["maxBatchDelay"] * 1000,
        "queue_size": 7,
        "max_image_bytes": 1234,
    }
    repo = serving_ops.serving_defaults(model_config)
    text = CONFIG.read_text()
    assert f"job_queue_size={repo['queue_size']}" in text
    assert f"max_request_size={repo['max_image_bytes']}" in text


def test_settings_file_is_the_handlers():
    """The binding reads the same handler: section as TorchServe's handler does."""
    from enhancer.settings import EnhancerSettings

    raw = yaml.safe_load(MODEL_CONFIG.read_text())
    assert MODEL_CONFIG == Path(__file__).parent.parent / "handlers" / "model-config.yaml"
    settings = EnhancerSettings.from_model_config(serving_ops.load_model_config())
    assert settings.max_input_pixels == raw["handler"]["max_input_pixels"]


def test_model_config_has_dynamic_batching_and_a_bounded_queue():
    from pytriton.model_config import TimeoutAction

    config = adapter.model_config(max_batch_size=4, delay_us=10_000, queue_size=16)
    assert config.batching and config.max_batch_size == 4 and not config.decoupled
    assert config.batcher.max_queue_delay_microseconds == 10_000
    policy = config.batcher.default_queue_policy
    assert policy.max_queue_size == 16 and policy.timeout_action == TimeoutAction.REJECT
    with pytest.raises(ValueError):
        adapter.model_config(max_batch_size=0, delay_us=0, queue_size=0)


def test_declared_inputs():
    inputs, outputs = adapter.model_tensors()
    by_name = {tensor.name: tensor for tensor in inputs}
    assert set(by_name) == {"image", "options"}
    assert by_name["options"].optional and not by_name["image"].optional
    # BYTES with one element per row: requests of any image size can share a batch
    assert all(t.dtype is np.bytes_ and t.shape == (1,) for t in inputs)
    assert [t.name for t in outputs] == list(adapter.OUTPUT_NAMES)


def test_the_binding_imports_no_engine_internals():
    """A thin adapter: decoding, options, tiling and encoding stay in the engine."""
    tree = ast.parse(Path(adapter.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    ours = {module for module in imported if module.split(".")[0] == "enhancer"}
    assert ours == {"enhancer.engine", "enhancer.errors"}


# -- libpython ---------------------------------------------------------------------------------


def libdir_or_skip() -> str:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("this interpreter has no shared libpython")
    return sysconfig.get_config_var("LIBDIR")


def test_libdir_goes_first():
    libdir = libdir_or_skip()
    assert triton_ops.python_library_path({}) == libdir
    assert triton_ops.python_library_path({"LD_LIBRARY_PATH": "/opt/a:/opt/b"}) == (
        f"{libdir}:/opt/a:/opt/b"
    )
    # already there but not first: moved to the front, not duplicated
    assert triton_ops.python_library_path({"LD_LIBRARY_PATH": f"/opt/a:{libdir}"}) == (
        f"{libdir}:/opt/a"
    )


def test_correct_environment_is_left_alone():
    libdir = libdir_or_skip()
    assert triton_ops.python_library_path({"LD_LIBRARY_PATH": f"{libdir}:/opt/a"}) is None


def test_static_interpreter_changes_nothing(monkeypatch):
    real = sysconfig.get_config_var
    monkeypatch.setattr(
        sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else real(name)
    )
    assert triton_ops.python_library_path({}) is None


def test_socket_paths_that_cannot_fit_are_refused_up_front(tmp_path, monkeypatch):
    assert triton_ops.socket_path_problem(Path("/tmp/enhancer-triton-x/workspace")) is None
    deep = Path("/tmp") / ("d" * 90) / "workspace"
    assert "the workspace" in triton_ops.socket_path_problem(deep)
    monkeypatch.setattr(triton_ops.tempfile, "gettempdir", lambda: "/tmp/" + "t" * 80)
    problem = triton_ops.socket_path_problem(Path("/tmp/w"))
    assert "TMPDIR" in problem and "107-byte" in problem


def test_admission_by_cost_is_torchserves_413_and_503(sr_model):
    """The same admission by cost as the TorchServe handler: the budget is the same share of the
    same responseTimeout (Enhancer.admit_by_cost, which scripts.triton_serve calls), a row over
    it is a 413 with the estimate, the budget and max_scale, and a row that fits alone but not
    after the rows batched before it is a 503 ServiceBusy."""
    from enhancer.admission import Throughput
    from enhancer.engine import Enhancer
    from enhancer.settings import EnhancerSettings

    enhancer = Enhancer.load(sr_model, settings=EnhancerSettings(time_budget_share=0.25))
    assert enhancer.admit_by_cost({"responseTimeout": 8}) == 2.0
    assert enhancer.throughput is not None  # calibrated on this machine, as at a worker's start
    assert (
        Enhancer.load(sr_model, settings=EnhancerSettings(time_budget_share=0.0)).admit_by_cost(
            {"responseTimeout": 8}
        )
        is None
    )
    # a made-up speed from here on, so the sizes below do not depend on this machine's
    enhancer.throughput = Throughput(1e-5, 0.0, "torchscript", "cpu")
    infer = adapter.make_infer_func(enhancer)
    (too_much,) = infer([request(photo(300, 200), options=[{"scale": "8"}])])
    refused = row(too_much)
    assert refused["status"] == 413 and refused["error"]["type"] == "PayloadTooLarge"
    assert "over the time budget of 2 s per request" in refused["error"]["message"]
    best = refused["error"]["max_scale"]
    assert best is not None and 1 <= best < 8
    assert f"the largest scale that fits this image is {best:g}" in refused["error"]["message"]

    each = enhancer.estimate(200, 150, 2.0)
    fit = int(2.0 // each)
    assert fit >= 1
    rows = infer([request(*[photo(200, 150)] * (fit + 1), options=[{"scale": "2"}] * (fit + 1))])
    statuses = [row(rows[0], i)["status"] for i in range(fit + 1)]
    assert statuses == [200] * fit + [503]
    assert row(rows[0], fit)["error"]["type"] == "ServiceBusy"
