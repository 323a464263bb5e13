"""Admission by cost (enhancer.admission and the engine's use of it): the work a request needs is
counted exactly as the tiles run, the worker's speed is measured at start, and what cannot finish
inside the time budget is refused with a 413 that names the estimate, the budget and the largest
scale that fits; a stand-in model that sleeps a known time per pixel shows the boundary holds."""

from __future__ import annotations

import json
import time

import pytest

from enhancer.admission import Estimator, Throughput, largest_scale, work
from enhancer.engine import Enhancer
from enhancer.errors import Busy, TooMuchWork
from enhancer.settings import EnhancerSettings
from tests.helpers.context import FakeContext, load_handler_class
from tests.helpers.images import to_bytes

TORCHSCRIPT = EnhancerSettings(backend="torchscript")


class Counting:
    """Wraps a ModelRunner: counts the model-input pixels it is called on, and sleeps
    ``seconds_per_pixel`` for each (a stand-in model of known cost)."""

    def __init__(self, runner, seconds_per_pixel: float = 0.0):
        self.runner = runner
        self.seconds_per_pixel = seconds_per_pixel
        self.pixels = 0

    def __call__(self, batch, **kwargs):
        pixels = batch.shape[0] * batch.shape[-2] * batch.shape[-1]
        self.pixels += pixels
        if self.seconds_per_pixel:
            time.sleep(pixels * self.seconds_per_pixel)
        return self.runner(batch, **kwargs)

    def __getattr__(self, name):
        return getattr(self.runner, name)


@pytest.fixture
def engine(sr_model):
    return Enhancer.load(sr_model, settings=TORCHSCRIPT)


@pytest.fixture
def restore_engine(restore_model):
    return Enhancer.load(restore_model, settings=TORCHSCRIPT)


@pytest.fixture
def sr4_engine(sr4_model):
    return Enhancer.load(sr4_model, settings=TORCHSCRIPT)


@pytest.mark.parametrize(
    ("size", "scale", "tile"),
    [((40, 30), 2, None), ((97, 61), 4, None), ((200, 50), 3, 48), ((1, 1), 8, None)],
)
@pytest.mark.parametrize("which", ["engine", "restore_engine", "sr4_engine"])
def test_work_counts_the_model_pixels_exactly_as_the_tiles_run(
    request, photo, which, size, scale, tile
):
    engine = request.getfixturevalue(which)
    engine.runner = counting = Counting(engine.runner)
    options = {"scale": str(scale), **({"tile": str(tile)} if tile else {})}
    engine.enhance(to_bytes(photo(*size)), options)
    model_pixels, output_pixels = work(*size, scale, engine.card, tile or engine.tile)
    assert counting.pixels == model_pixels
    target = (round(size[0] * scale), round(size[1] * scale))
    assert output_pixels >= 2 * target[0] * target[1]


def test_largest_scale_searches_hundredths():
    assert largest_scale(lambda scale: scale <= 2.345, 8) == 2.34
    assert largest_scale(lambda scale: scale <= 2.0, 8) == 2.0
    assert largest_scale(lambda scale: True, 3) == 2.99  # always under the scale asked for
    assert largest_scale(lambda scale: False, 8) is None
    assert largest_scale(lambda scale: True, 1) is None


def test_calibration_measures_the_engine_it_runs_on(engine):
    throughput = engine.calibrate(side=64)
    assert throughput.model_seconds_per_pixel > 0
    assert throughput.other_seconds_per_pixel > 0
    assert (throughput.backend, throughput.device) == ("torchscript", "cpu")
    assert engine.budget is None  # calibrating alone admits everything as before


def test_over_the_budget_is_a_413_naming_estimate_budget_and_largest_scale(engine, photo):
    # 1 microsecond per model pixel: 300x200 at 2x is about 0.07 s, at 4x about 0.36 s
    engine.admit_within(0.2, Throughput(1e-6, 0.0, "torchscript", "cpu"))
    data = to_bytes(photo(300, 200))
    assert engine.prepare(data, {"scale": "2"}).estimate == pytest.approx(
        engine.estimate(300, 200, 2.0)
    )
    with pytest.raises(TooMuchWork) as caught:
        engine.prepare(data, {"scale": "4"})
    error = caught.value
    assert error.status == 413
    assert f"needs about {engine.estimate(300, 200, 4.0):.0f} s" in error.message
    assert "time budget of 0 s" in error.message
    assert error.max_scale == 2.0  # a third pass costs more than the budget: 2 is the largest
    assert f"the largest scale that fits this image is {error.max_scale:g}" in error.message
    body = json.loads(error.to_json())
    assert body["type"] == "PayloadTooLarge" and body["max_scale"] == 2.0
    assert len(body["message"]) <= 300  # the client passes at most 300 characters on
    # the boundary: the suggested scale is admitted, the next hundredth is not
    engine.prepare(data, {"scale": "2"})
    with pytest.raises(TooMuchWork):
        engine.prepare(data, {"scale": "2.01"})


def test_when_no_scale_fits_the_message_names_an_image_size_that_does(engine, photo):
    engine.admit_within(0.01, Throughput(1e-6, 0.0, "torchscript", "cpu"))
    with pytest.raises(TooMuchWork) as caught:
        engine.prepare(to_bytes(photo(300, 200)), {"scale": "2"})
    assert caught.value.max_scale is None
    message = caught.value.message
    assert "no scale fits this image; about " in message
    width, height = map(int, message.split("about ")[-1].split(" ")[0].split("x"))
    assert engine.estimate(width, height, 2.0) <= 0.01
    assert 0.5 < width / height * 200 / 300 < 2.0  # the same shape, smaller
    engine.prepare(to_bytes(photo(width, height)), {"scale": "2"})


def test_the_pixel_caps_stay_the_outer_bound(sr_model, photo):
    engine = Enhancer.load(sr_model, settings=EnhancerSettings(max_output_pixels=10_000))
    engine.admit_within(1e9, Throughput(1e-9, 0.0))
    with pytest.raises(Exception, match="output image too large"):
        engine.prepare(to_bytes(photo(100, 100)), {"scale": "2"})


def test_a_batch_admits_jobs_until_its_budget_then_says_busy(engine, photo):
    engine.admit_within(1.0, Throughput(1e-6, 0.0))
    data = to_bytes(photo(300, 200))
    estimate = engine.estimate(300, 200, 2.0)
    per_batch = int(1.0 // estimate)
    jobs = [engine.prepare(data, {"scale": "2"}) for _ in range(per_batch + 2)]
    admitted = engine.admit_batch(jobs)
    assert admitted[:per_batch] == jobs[:per_batch]
    assert all(isinstance(item, Busy) and item.status == 503 for item in admitted[per_batch:])
    assert "retry" in admitted[-1].message


def test_a_stand_in_model_of_known_cost_admits_only_what_finishes_in_time(engine, photo):
    """The boundary with a model that sleeps 20 microseconds per pixel (calibrated, not assumed):
    the largest admitted scale finishes inside the timeout, the next hundredth is refused."""
    engine.runner = Counting(engine.runner, seconds_per_pixel=20e-6)
    timeout = 8.0
    engine.admit_within(timeout * 0.5, engine.calibrate(side=96))
    data = to_bytes(photo(96, 64))  # about 0.3 s a pass at 2x, 1.5 s at 4x, 6 s at 8x
    with pytest.raises(TooMuchWork) as caught:
        engine.prepare(data, {"scale": "8"})
    best = caught.value.max_scale
    assert best is not None and best >= 1.0
    started = time.perf_counter()
    engine.enhance(data, {"scale": f"{best:g}"})
    took = time.perf_counter() - started
    assert took < timeout, (best, took)
    with pytest.raises(TooMuchWork):
        engine.prepare(data, {"scale": f"{best + 0.01:g}"})


def test_the_handler_budgets_a_share_of_response_timeout_and_answers_413_json(model_dir, photo):
    handler = load_handler_class()()
    context = FakeContext(model_dir, {"backend": "torchscript", "time_budget_share": 0.25})
    context.model_yaml_config["responseTimeout"] = 8
    handler.initialize(context)
    assert handler.enhancer.budget == 2.0
    assert handler.enhancer.throughput.backend == "torchscript"
    handler.enhancer.throughput = Throughput(1e-5, 0.0, "torchscript", "cpu")
    requests = [{"data": to_bytes(photo(300, 200)), "scale": b"8"}]
    context = FakeContext(model_dir, headers=[{}])
    (body,) = handler.handle(requests, context)
    assert context.statuses[0][0] == 413
    answer = json.loads(body)
    assert answer["type"] == "PayloadTooLarge"
    assert "over the time budget of 2 s per request" in answer["message"]
    assert answer["max_scale"] is not None and 1 <= answer["max_scale"] < 8


def test_time_budget_share_zero_turns_admission_off(model_dir):
    handler = load_handler_class()()
    handler.initialize(FakeContext(model_dir, {"time_budget_share": 0.0}))
    assert handler.enhancer.budget is None
    with pytest.raises(ValueError, match="time_budget_share"):
        EnhancerSettings.from_mapping({"time_budget_share": 2.0})


def test_restoring_passes_are_counted_and_auto_scale_stays_in_the_budget(engine, sr_model, photo):
    from enhancer.card import ModelCard

    card = ModelCard.load(sr_model.with_suffix(".json"))
    plain = work(60, 40, 2, card, 32)
    more = work(60, 40, 2, card, 32, level=2, enhance_first=True)
    # enhance_first runs the model at 60x40 once more, level 2 at 120x80 once more
    assert more[0] == plain[0] + work(60, 40, 1, card, 32)[0] + work(120, 80, 1, card, 32)[0]
    assert more[1] == plain[1] + 60 * 40 + 120 * 80

    engine.admit_within(0.2, Throughput(1e-6, 0.0, "torchscript", "cpu"))
    data = to_bytes(photo(300, 200))
    with pytest.raises(TooMuchWork):
        engine.prepare(data, {"scale": "2", "level": "4"})  # admitted at level 1 (test above)
    # auto wants 6x for a 200 px short side; the budget admits 2x (test above): auto says 2
    job = engine.prepare(data, {"scale": "auto"})
    assert job.options.scale == 2.0 and job.estimate <= 0.2


def test_the_page_gets_the_one_estimator_and_prices_as_the_worker_does(model_dir, photo):
    """The worker publishes its estimator (describe_handle, as TorchServe's
    ``GET /models/enhancer?customized=true`` shows it); rebuilt from that JSON it gives the very
    estimates the worker admits with, for raw options as the page holds them."""
    handler = load_handler_class()()
    context = FakeContext(model_dir, {"backend": "torchscript", "time_budget_share": 0.25})
    context.model_yaml_config["responseTimeout"] = 8
    handler.initialize(context)
    engine = handler.enhancer
    engine.throughput = Throughput(2e-6, 3e-7, "torchscript", "cpu")
    published = json.loads(handler.describe_handle())["estimator"]
    estimator = Estimator.from_json(json.loads(json.dumps(published)))
    assert estimator == engine.estimator()
    cases = [
        ({"scale": "3"}, (3.0, None, 1, False)),
        ({"scale": "2", "level": "2", "enhance_first": "yes"}, (2.0, None, 2, True)),
        ({"scale": "4", "tile": "64"}, (4.0, 64, 1, False)),
        ({}, (2.0, None, 1, False)),
    ]
    for options, (scale, tile, level, first) in cases:
        want = engine.estimate(300, 200, scale, tile, level, first)
        assert estimator.request_seconds(300, 200, options) == pytest.approx(want, rel=1e-12)
    # scale=auto: priced at the factor the worker picks (lowered to fit its 2 s budget)
    job = engine.prepare(to_bytes(photo(120, 90)), {"scale": "auto"})
    assert estimator.request_seconds(120, 90, {"scale": "auto"}) == pytest.approx(job.estimate)
    # what the worker refuses as a bad option has no price
    assert estimator.request_seconds(300, 200, {"scale": "nine"}) is None
    assert estimator.request_seconds(300, 200, {"scale": "80"}) is None
    with pytest.raises(ValueError):
        Estimator.from_json({"throughput": {}})


def test_a_worker_without_admission_publishes_no_estimator(model_dir):
    handler = load_handler_class()()
    handler.initialize(FakeContext(model_dir, {"time_budget_share": 0.0}))
    described = json.loads(handler.describe_handle())
    assert described["estimator"] is None
    assert [model["name"] for model in described["models"]] == ["enhancer"]  # still listed


def test_a_4x_card_is_costed_by_its_own_pass_plan(sr4_engine, engine):
    """4x on a 4x card is one model pass at the input size: the same model pixels as 2x or 3x on
    it (one 4x pass, resized down), and fewer than the two passes 4x takes on a 2x card; 8x is a
    pass at the input size plus one at twice it."""
    card4, card2 = sr4_engine.card, engine.card
    one_pass = work(40, 30, 4, card4, 32)[0]
    assert work(40, 30, 2, card4, 32)[0] == work(40, 30, 3, card4, 32)[0] == one_pass
    assert one_pass == work(40, 30, 2, card2, 32)[0]  # same windows: same input, tile, overlap
    assert work(40, 30, 4, card2, 32)[0] > one_pass
    assert work(40, 30, 8, card4, 32)[0] == one_pass + work(80, 60, 4, card4, 32)[0]
