"""Several models at once, end to end: a real TorchServe and a real Triton binding each serving a
model folder of three tiny models (the default scale-2 one, a 4x and a scale-1 export), picked by
name per request with the ``model`` option; the page's ``GET /models`` listing from the real
worker; the memory bound (one model loaded besides the default, the other unloaded); and the batch
command ``enhance --server`` against both servers.

Every answer is compared with the engine run in this process on the same model with the server's
settings (handlers/model-config.yaml): byte for byte, as tests/test_batch.py does.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image

from enhancer import batch
from enhancer.contract import MODEL_HEADER
from enhancer.engine import Enhancer
from enhancer.settings import EnhancerSettings
from scripts.ops.paths import MODEL_CONFIG
from tests.helpers.images import open_bytes, photo_array, to_bytes
from tests.helpers.servers import start_torchserve, stop_torchserve
from tests.helpers.tiny_models import tiny_restore, tiny_sr, tiny_sr4

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

TIMEOUT = 120
SERVED = ["enhancer", "one", "x4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The model folder: enhancer.pt (the default) and two exports in folders of their own."""
    folder = tmp_path_factory.mktemp("models")
    tiny_sr(folder)
    tiny_sr4(folder / "x4", name="x4", seed=4)
    tiny_restore(folder / "one", name="one", seed=5)
    return folder


@pytest.fixture(scope="module")
def settings() -> EnhancerSettings:
    return EnhancerSettings.from_model_config(yaml.safe_load(MODEL_CONFIG.read_text()))


@pytest.fixture(scope="module")
def local(folder, settings):
    """Each model alone in this process, with the server's settings: the expected bytes."""
    paths = {
        "enhancer": folder / "enhancer.pt",
        "x4": folder / "x4/x4.pt",
        "one": folder / "one/one.pt",
    }
    return {name: Enhancer.load(path, settings=settings) for name, path in paths.items()}


@pytest.fixture(scope="module")
def ts(folder, tmp_path_factory):
    server = start_torchserve(
        folder / "enhancer.pt",
        tmp_path_factory.mktemp("ts-models"),
        model_config={"handler": {"max_loaded_models": 1}},
    )
    yield server
    stop_torchserve(server)


def photo_png(width: int = 40, height: int = 30) -> bytes:
    return to_bytes(Image.fromarray(photo_array(width, height, seed=3)))


def post(server, data: bytes, **options) -> requests.Response:
    return requests.post(
        server.predictions_url,
        files={"data": ("photo.png", data)},
        data={name: str(value) for name, value in options.items()},
        headers=server.auth(),
        timeout=TIMEOUT,
    )


# -- TorchServe ----------------------------------------------------------------------------------


def test_torchserve_serves_each_model_by_name(ts, local):
    data = photo_png()
    default = post(ts, data)
    assert default.status_code == 200, default.text
    assert MODEL_HEADER not in default.headers
    assert default.content == local["enhancer"].enhance(data).data
    answers = {}
    for name in ("x4", "one", "enhancer"):
        response = post(ts, data, model=name, scale=2)
        assert response.status_code == 200, (name, response.text)
        assert response.headers[MODEL_HEADER] == name
        assert response.content == local[name].enhance(data, {"scale": "2"}).data, name
        answers[name] = response.content
    assert len(set(answers.values())) == 3  # three models, three different answers
    four = post(ts, data, model="x4", scale=4)
    assert open_bytes(four.content).size == (160, 120)
    raw = requests.post(  # a raw body takes the option as a header, like every option
        ts.predictions_url,
        data=data,
        headers={**ts.auth(), "Content-Type": "application/octet-stream", "X-Enhance-Model": "x4"},
        timeout=TIMEOUT,
    )
    assert raw.content == answers["x4"]


def test_torchserve_refuses_an_unknown_model_and_denoise_with_one(ts):
    response = post(ts, photo_png(), model="nope")
    assert response.status_code == 400
    assert response.json()["message"] == (
        "option 'model': 'nope' is not a served model (served: enhancer, one, x4)"
    )
    response = post(ts, photo_png(), model="x4", denoise=0.5)
    assert response.status_code == 400 and "denoise" in response.json()["message"]
    assert post(ts, photo_png()).status_code == 200  # and the worker serves on


def test_the_worker_keeps_one_model_loaded_besides_the_default(ts):
    """max_loaded_models: 1 (model-config.yaml's handler: section): asking for the other model
    unloads the one loaded before, and the listing says which is loaded now."""
    from enhancer.client import TorchServeClient

    assert post(ts, photo_png(), model="x4").status_code == 200
    assert post(ts, photo_png(), model="one").status_code == 200
    assert "unloaded model 'x4' (the least recently used)" in ts.log_text()
    client = TorchServeClient(
        ts.inference_url, ts.management_url, "enhancer", ts.workdir / "key_file.json"
    )
    listed = client.describe_models()
    assert [m["name"] for m in listed["models"]] == SERVED
    assert {m["name"]: m["loaded"] for m in listed["models"]} == {
        "enhancer": True,
        "one": True,
        "x4": False,
    }
    assert listed["max_loaded"] == 1 and listed["pair"] is False
    assert {m["name"]: m["scale"] for m in listed["models"]} == {"enhancer": 2, "one": 1, "x4": 4}


def test_the_pages_model_listing_comes_from_the_worker(ts):
    from frontend import create_app

    app = create_app(
        {
            "TESTING": True,
            "TORCHSERVE_URL": ts.inference_url,
            "TORCHSERVE_MANAGEMENT_URL": ts.management_url,
            "KEY_FILE": str(ts.workdir / "key_file.json"),
            "QUEUE_FILE": str(ts.workdir / "page_queue.json"),
        }
    )
    client = app.test_client()
    listed = client.get("/models").get_json()
    assert [m["name"] for m in listed["models"]] == SERVED
    assert all("quality" in m and "scale" in m for m in listed["models"]), listed
    # and an upload through the page picks the model
    page = client.post(
        "/enhance",
        data={"image": (io.BytesIO(photo_png()), "p.png"), "model": "x4"},
        content_type="multipart/form-data",
    )
    assert page.status_code == 200, page.get_data(as_text=True)
    assert page.headers[MODEL_HEADER] == "x4"


def test_enhance_server_sends_the_model_to_torchserve(ts, local, tmp_path):
    source = tmp_path / "in" / "p.png"
    source.parent.mkdir()
    source.write_bytes(photo_png())
    out = tmp_path / "out"
    args = [str(source), "-o", str(out), "--server", ts.predictions_url, "-q"]
    key = ["--key-file", str(ts.workdir / "key_file.json")]
    assert batch.main([*args, *key, "--model", "x4"]) == 0
    assert (out / "p_x2.png").read_bytes() == local["x4"].enhance(source.read_bytes()).data


def test_the_pages_model_menu_picks_a_model_in_a_browser(ts, local, browser, tmp_path):
    """The page's Model menu is built from the worker's listing; choosing x4 hides the Clean-up
    slider, shows the card's figures, and the photo dropped comes back from that model."""
    from tests.helpers.browser import drop
    from tests.helpers.pages import start_page, stop_page

    site = start_page(ts, tmp_path / "page")
    try:
        browser.goto(site.url)
        menu = browser.locator("#opt-model")
        browser.locator("#opt-model option[value=x4]").wait_for(state="attached")
        assert menu.evaluate("m => [...m.options].map((o) => o.value)") == ["", "one", "x4"]
        assert browser.locator("#opt-model option[value=x4]").text_content() == "x4 (4×)"
        menu.select_option("x4")
        assert "x4 test, 4× model: quality not measured" in (
            browser.locator("#model-help").text_content()
        )
        assert not browser.locator("#opt-denoise").is_visible()
        original = photo_png(60, 40)
        drop(browser, [("p.png", "image/png", original)])
        browser.locator("#queue li[data-state=done]").wait_for(timeout=60_000)
        with browser.expect_download() as download_info:
            browser.locator("#queue li a.download").click()
        saved = tmp_path / "download.png"
        download_info.value.save_as(saved)
    finally:
        stop_page(site)
    # what the page sends by default for a PNG, with model=x4 and no denoise
    fields = {"scale": "2", "level": "1", "metadata": "strip-location", "faces": "off",
              "quality": "90"}  # fmt: skip
    assert saved.read_bytes() == local["x4"].enhance(original, fields).data


# -- Triton --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(folder, tmp_path_factory):
    pytest.importorskip("pytriton", reason="needs the triton extra")
    from tests.helpers.triton import start_triton

    server = start_triton(folder / "enhancer.pt", tmp_path_factory.mktemp("triton-models"))
    yield server
    server.stop()


@pytest.mark.triton
def test_triton_serves_each_model_by_name_as_torchserve_does(triton, ts, local):
    from scripts.ops import triton_client

    data = photo_png()
    assert "models (the model option): enhancer (x2, default), one (x1), x4 (x4)" in (
        triton.log_text()
    )
    client = triton.client()
    try:
        # one request of four rows (the batch limit): each row picks its own model
        options = [{}, {"model": "x4"}, {"model": "one"}, {"model": "nope"}]
        replies = triton_client.enhance(client, [data] * 4, options, timeout=TIMEOUT)
        (four,) = triton_client.enhance(client, [data], [{"model": "x4", "scale": 4}])
    finally:
        client.close()
    default, x4, one, unknown = replies
    assert default.status == x4.status == one.status == four.status == 200
    assert default.data == local["enhancer"].enhance(data).data
    assert x4.data == local["x4"].enhance(data).data == post(ts, data, model="x4").content
    assert one.data == local["one"].enhance(data).data == post(ts, data, model="one").content
    assert x4.headers[MODEL_HEADER] == "x4" and MODEL_HEADER not in default.headers
    assert (four.width, four.height) == (160, 120)
    assert unknown.status == 400
    assert unknown.error["message"].endswith("(served: enhancer, one, x4)")


@pytest.mark.triton
def test_enhance_server_works_against_triton(triton, local, tmp_path):
    """``enhance --server http://host:port/v2/models/enhancer``: the same files as in-process."""
    tree = tmp_path / "in"
    tree.mkdir()
    (tree / "a.png").write_bytes(photo_png(40, 30))
    (tree / "b.png").write_bytes(photo_png(24, 20))
    (tree / "bad.png").write_bytes(b"not an image at all")
    url = f"http://{triton.url}/v2/models/enhancer"
    out = tmp_path / "out"
    assert batch.main([str(tree), "-o", str(out), "--server", url, "-q"]) == 1  # bad.png failed
    for name in ("a", "b"):
        expected = local["enhancer"].enhance((tree / f"{name}.png").read_bytes()).data
        assert (out / f"{name}_x2.png").read_bytes() == expected
    assert not (out / "bad_x2.png").exists()
    picked = tmp_path / "picked"
    args = [str(tree / "a.png"), "-o", str(picked), "--server", url]
    assert batch.main([*args, "--model", "x4", "--scale", "4", "-q"]) == 0
    expected = local["x4"].enhance((tree / "a.png").read_bytes(), {"scale": "4"}).data
    assert (picked / "a_x4.png").read_bytes() == expected
    args = [str(tree / "a.png"), "-o", str(tmp_path / "u"), "--server", url]
    assert batch.main([*args, "--model", "nope", "-q"]) == 1
    nobody = "http://127.0.0.1:9/v2/models/enhancer"
    assert batch.main([str(tree), "-o", str(tmp_path / "x"), "--server", nobody]) == 2
