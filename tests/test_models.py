"""Several models at once (enhancer.catalog, the ``model`` option): every card in the model folder
is a model a request may pick by name; the default stays the clean/restore pair at its ``denoise``
level; a worker keeps at most ``max_loaded_models`` of the others loaded (least recently used
unloaded); the listing gives each one's name, scale and measured quality.

Hermetic: tiny models made in code in a temporary folder, the engine in this process, the handler
through a stand-in context, the archive built with the real torch-model-archiver (no server).
"""

from __future__ import annotations

import gc
import json
import weakref
import zipfile

import pytest
from PIL import Image

from enhancer import catalog
from enhancer.card import ModelCard
from enhancer.contract import MODEL_HEADER
from enhancer.engine import Enhancer
from enhancer.errors import OptionError
from enhancer.serving import torchserve as door
from enhancer.settings import EnhancerSettings
from scripts.ops import archive
from tests.helpers.context import FakeContext, load_handler_class
from tests.helpers.images import open_bytes, photo_array, to_bytes
from tests.helpers.tiny_models import tiny_restore, tiny_sr, tiny_sr4

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

SETTINGS = EnhancerSettings(backend="torchscript", max_loaded_models=2)
QUALITY = {
    "results": [
        {
            "track": "bicubic",
            "set": "set5",
            "scale": 4,
            "images": 5,
            "bicubic": {"psnr": 28.4, "ssim": 0.81},
            "model": {"psnr": 30.5, "ssim": 0.86},
        }
    ]
}


def with_quality(model, quality=QUALITY):
    """Add measured quality to a model's card (as scripts.evaluate --write-card does)."""
    card = json.loads(model.with_suffix(".json").read_text())
    card["quality"] = quality
    model.with_suffix(".json").write_text(json.dumps(card))
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model folder as model_store/ is: the clean/restore pair, a face model (not listed), and
    three exported models: two in folders of their own, one beside the pair."""
    folder = tmp_path_factory.mktemp("store")
    tiny_sr(folder, name="enhancer", seed=1)
    tiny_sr(folder, name="restore", seed=2)
    tiny_sr(folder, name="face", seed=3)
    with_quality(tiny_sr4(folder / "x4", name="x4", seed=4))
    tiny_restore(folder / "one", name="one", seed=5)
    tiny_sr(folder, name="other", seed=6)
    (folder / "notes.pt").write_bytes(b"no card beside it: not a model")
    hidden = folder / ".backend-cache"
    tiny_sr(hidden, name="hidden", seed=7)
    return folder


def load(store, settings=SETTINGS) -> Enhancer:
    model, restore = store / "enhancer.pt", store / "restore.pt"
    extras = catalog.find_models(store, skip=[model, restore])
    return Enhancer.load(model, settings=settings, restore_path=restore, extra_models=extras)


def png(width: int = 40, height: int = 30) -> bytes:
    return to_bytes(Image.fromarray(photo_array(width, height)))


# -- the catalog ---------------------------------------------------------------------------------


def test_every_card_in_the_folder_is_found_but_the_pair_the_face_model_and_hidden_ones(store):
    found = catalog.find_models(store, skip=[store / "enhancer.pt", store / "restore.pt"])
    assert [p.relative_to(store).as_posix() for p in found] == [
        "other.pt",
        "one/one.pt",
        "x4/x4.pt",
    ]


def test_the_pair_is_served_as_clean_and_restore_and_the_others_by_card_name(store):
    engine = load(store)
    assert list(engine.catalog) == ["clean", "restore", "other", "one", "x4"]
    roles = {name: entry.role for name, entry in engine.catalog.items()}
    assert roles == {
        "clean": "clean",
        "restore": "restore",
        "other": "extra",
        "one": "extra",
        "x4": "extra",
    }
    assert engine.loaded == {}  # only cards were read: the others load when first asked for


def test_a_single_default_model_is_served_under_its_cards_name(sr_model):
    engine = Enhancer.load(sr_model, settings=SETTINGS)
    assert list(engine.catalog) == ["enhancer"]
    plain = engine.enhance(png())
    named = engine.enhance(png(), {"model": "enhancer"})
    assert named.data == plain.data and named.headers[MODEL_HEADER] == "enhancer"


def test_two_models_with_one_name_or_a_bad_name_refuse_the_start(tmp_path):
    model = tiny_sr(tmp_path, name="enhancer")
    tiny_sr(tmp_path / "a", name="same")
    tiny_sr(tmp_path / "b", name="same")
    card = ModelCard.load(model.with_suffix(".json"))
    with pytest.raises(ValueError, match="two served models are named 'same'"):
        catalog.build(model, card, extras=catalog.find_models(tmp_path, skip=[model]))
    bad = tiny_sr(tmp_path / "c", name="bad")
    data = json.loads(bad.with_suffix(".json").read_text())
    data["name"] = "has space"
    bad.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="cannot name a model"):
        catalog.build(model, card, extras=[bad])
    # clean and restore are the pair's names: an exported model cannot take them
    clash = tiny_sr(tmp_path / "d", name="clean")
    restore = tiny_sr(tmp_path / "pair", name="restore", seed=2)
    with pytest.raises(ValueError, match="named 'clean'"):
        catalog.build(model, card, restore, card, extras=[clash])


# -- picking a model per request -----------------------------------------------------------------


def test_a_named_model_answers_what_it_answers_alone(store):
    engine = load(store)
    data = png()
    for name, scale in (("x4", 4), ("one", 1), ("other", 2)):
        path = store / (f"{name}/{name}.pt" if name != "other" else "other.pt")
        alone = Enhancer.load(path, settings=SETTINGS)
        for options in ({}, {"scale": "3", "format": "webp"}):
            result = engine.enhance(data, {**options, "model": name})
            expected = alone.enhance(data, options)
            assert result.data == expected.data, (name, options)
            assert result.headers[MODEL_HEADER] == name
            assert "X-Enhance-Denoise" not in result.headers
        assert alone.card.scale == scale
    assert open_bytes(engine.enhance(data, {"model": "x4", "scale": "4"}).data).size == (160, 120)


def test_clean_and_restore_are_the_pairs_ends_and_the_default_is_unchanged(store):
    engine = load(store)
    data = png()
    assert (
        engine.enhance(data, {"model": "clean"}).data == engine.enhance(data, {"denoise": "0"}).data
    )
    assert (
        engine.enhance(data, {"model": "restore"}).data
        == engine.enhance(data, {"denoise": "1"}).data
    )
    default = engine.enhance(data)
    assert default.headers["X-Enhance-Denoise"] == "0.5" and MODEL_HEADER not in default.headers
    pair = Enhancer.load(
        store / "enhancer.pt", settings=SETTINGS, restore_path=store / "restore.pt"
    )
    assert default.data == pair.enhance(data).data
    assert (
        engine.enhance(data, {"model": "clean"}).data != engine.enhance(data, {"model": "x4"}).data
    )


def test_an_unknown_model_is_a_400_that_names_the_served_ones(store):
    engine = load(store)
    with pytest.raises(OptionError) as caught:
        engine.prepare(png(), {"model": "nope"})
    assert caught.value.status == 400
    assert caught.value.message == (
        "option 'model': 'nope' is not a served model (served: clean, restore, other, one, x4)"
    )
    with pytest.raises(OptionError, match="option 'model': is empty"):
        engine.prepare(png(), {"model": " "})
    assert engine.loaded == {}


def test_denoise_applies_to_the_default_pair_only(store):
    engine = load(store)
    for name in ("clean", "restore", "x4"):
        with pytest.raises(OptionError) as caught:
            engine.prepare(png(), {"model": name, "denoise": "0.5"})
        assert caught.value.message.startswith("option 'denoise': blends the clean and restore")
        assert f"model={name}" in caught.value.message


def test_options_are_checked_against_the_named_models_card(tmp_path):
    model = tiny_sr(tmp_path, name="enhancer")
    tiny_sr(tmp_path / "fixed", name="fixed", tile=48, dynamic=False)
    engine = Enhancer.load(
        model, settings=SETTINGS, extra_models=catalog.find_models(tmp_path, skip=[model])
    )
    engine.prepare(png(), {"tile": "32"})
    with pytest.raises(OptionError, match="this model runs only at tile 48"):
        engine.prepare(png(), {"tile": "32", "model": "fixed"})
    engine.prepare(png(), {"tile": "48", "model": "fixed"})


def test_one_batch_mixes_models_and_each_request_gets_its_own(store):
    engine = load(store)
    data = png()
    requests = [
        (data, {"model": "x4"}),
        (data, {}),
        (data, {"model": "nope"}),
        (data, {"model": "one", "scale": "2"}),
        (data, {"model": "clean"}),
    ]
    results = engine.enhance_batch(requests)
    assert results[2].status == 400
    for i in (0, 1, 3, 4):
        assert results[i].data == engine.enhance(*requests[i]).data, i


# -- memory: at most max_loaded_models of the others ------------------------------------------


def test_loading_a_third_model_unloads_the_least_recently_used(store):
    engine = load(store)  # max_loaded_models=2
    data = png(20, 16)
    engine.enhance(data, {"model": "x4"})
    engine.enhance(data, {"model": "one"})
    assert list(engine.loaded) == ["x4", "one"]
    unloaded = weakref.ref(engine.loaded["x4"])
    engine.enhance(data, {"model": "x4"})  # used again: now the most recent
    assert list(engine.loaded) == ["one", "x4"]
    engine.enhance(data, {"model": "other"})  # a third: "one" goes
    assert list(engine.loaded) == ["x4", "other"]
    engine.enhance(data, {"model": "clean"})  # the pair's ends are the default's: nothing loads
    assert list(engine.loaded) == ["x4", "other"]
    engine.enhance(data, {"model": "one"})  # loaded again, "x4" goes and is freed
    assert list(engine.loaded) == ["other", "one"]
    gc.collect()
    assert unloaded() is None


def test_max_loaded_models_is_a_setting(store):
    engine = load(store, EnhancerSettings(backend="torchscript", max_loaded_models=1))
    engine.enhance(png(20, 16), {"model": "x4"})
    engine.enhance(png(20, 16), {"model": "one"})
    assert list(engine.loaded) == ["one"]
    with pytest.raises(ValueError, match="max_loaded_models"):
        EnhancerSettings.from_mapping({"max_loaded_models": 0})


def test_a_model_that_does_not_match_its_card_fails_its_requests_not_the_worker(tmp_path):
    model = tiny_sr(tmp_path, name="enhancer")
    broken = tiny_sr(tmp_path / "broken", name="broken")
    broken.write_bytes(broken.read_bytes() + b"tampered")
    engine = Enhancer.load(
        model, settings=SETTINGS, extra_models=catalog.find_models(tmp_path, skip=[model])
    )
    (result,) = engine.enhance_batch([(png(), {"model": "broken"})])
    assert result.status == 500 and "model 'broken' could not be loaded" in result.message
    assert engine.loaded == {}
    assert engine.enhance(png()).width == 80  # the default serves on


def test_a_model_loaded_later_is_admitted_by_cost_within_the_same_budget(store):
    engine = load(store)
    engine.admit_within(100.0)
    job = engine.prepare(png(), {"model": "x4"})
    assert engine.loaded["x4"].budget == 100.0 and job.estimate is not None


# -- the listing ---------------------------------------------------------------------------------


def test_the_listing_names_each_model_with_scale_and_measured_quality(store):
    engine = load(store)
    engine.enhance(png(20, 16), {"model": "one"})
    listed = engine.models()
    assert listed["pair"] is True and listed["max_loaded"] == 2
    by_name = {entry["name"]: entry for entry in listed["models"]}
    assert list(by_name) == ["clean", "restore", "other", "one", "x4"]
    assert by_name["x4"] == {
        "name": "x4",
        "version": "test",
        "scale": 4,
        "default": False,
        "loaded": False,
        "quality": [
            {
                "track": "bicubic",
                "set": "set5",
                "scale": 4,
                "psnr": 30.5,
                "ssim": 0.86,
                "bicubic_psnr": 28.4,
            }
        ],
    }
    assert by_name["one"]["scale"] == 1 and by_name["one"]["loaded"] is True
    assert by_name["one"]["quality"] is None  # its card records none
    assert by_name["clean"]["default"] and by_name["clean"]["loaded"]
    # TorchServe's describe (customizedMetadata) carries it beside the estimator
    described = json.loads(door.describe(engine))
    assert described["models"] == json.loads(json.dumps(listed["models"]))
    assert described["estimator"] is None


def test_the_shipped_cards_quality_reads_as_the_listing_shows_it():
    from scripts.ops.paths import MODEL_STORE

    card = ModelCard.load(MODEL_STORE / "enhancer.json")
    rows = catalog.quality_summary(card)
    assert rows and {"track", "set", "scale", "psnr", "ssim", "bicubic_psnr"} == set(rows[0])


# -- the archive and the handler -----------------------------------------------------------------


def test_the_archive_ships_every_model_and_the_worker_serves_them_by_name(store, tmp_path):
    model, restore = store / "enhancer.pt", store / "restore.pt"
    mar = archive.build_archive(
        model, export_path=tmp_path / "store", store=True, force=True, restore=restore
    )
    with zipfile.ZipFile(mar) as zipped:
        names = set(zipped.namelist())
        assert {"enhancer.pt", "restore.pt", "face.pt"} <= names
        models = sorted(n for n in names if n.startswith("models/"))
        assert models == [f"models/{n}.{e}" for n in ("one", "other", "x4") for e in ("json", "pt")]
        assert not any(n.startswith(("restore/", "staged/")) for n in names)
        unpacked = tmp_path / "unpacked"
        zipped.extractall(unpacked)
    assert not archive.is_stale(mar, model, restore=restore)
    assert archive.is_stale(mar, model, restore=restore, extras={})
    alone = archive.build_archive(
        model, name="alone", export_path=tmp_path / "store", restore=restore, extras={}
    )
    with zipfile.ZipFile(alone) as zipped:
        assert not any(n.startswith("models/") for n in zipped.namelist())

    handler = load_handler_class()()
    context = FakeContext(unpacked, {"backend": "torchscript", "time_budget_share": 0})
    context.headers = [{}, {"X-Enhance-Model": "x4"}, {}]
    handler.initialize(context)
    assert list(handler.enhancer.catalog) == ["clean", "restore", "one", "other", "x4"]
    data = png()
    requests = [
        {"data": data, "model": b"one"},
        {"body": data},
        {"data": data, "model": b"nope"},
    ]
    responses = handler.handle(requests, context)
    assert context.statuses.get(0, (200,))[0] == 200
    assert responses[0] == Enhancer.load(store / "one/one.pt", settings=SETTINGS).enhance(data).data
    assert context.response_headers[0][MODEL_HEADER] == "one"
    x4 = Enhancer.load(store / "x4/x4.pt", settings=SETTINGS)
    assert responses[1] == x4.enhance(data).data  # the header picked the 4x model
    assert context.response_headers[1][MODEL_HEADER] == "x4"
    assert context.statuses[2][0] == 400 and b"not a served model" in responses[2]
    assert [m["name"] for m in json.loads(handler.describe_handle())["models"]] == [
        "clean",
        "restore",
        "one",
        "other",
        "x4",
    ]


def test_the_engine_package_checks_the_manifest_of_an_archive_with_models(store, tmp_path):
    """The unpacked archive's SHA256SUMS covers the models too (enhancer.integrity)."""
    from enhancer.integrity import ArchiveDamagedError, verify_folder

    mar = archive.build_archive(
        store / "enhancer.pt", export_path=tmp_path, store=True, restore=store / "restore.pt"
    )
    with zipfile.ZipFile(mar) as zipped:
        zipped.extractall(tmp_path / "u")
    verify_folder(tmp_path / "u")
    card = tmp_path / "u" / "models" / "x4.json"
    card.write_text(card.read_text().replace('"test"', '"edited"'))
    with pytest.raises(ArchiveDamagedError, match="x4.json"):
        verify_folder(tmp_path / "u")
