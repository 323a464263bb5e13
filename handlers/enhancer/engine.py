"""The enhancement engine: bytes -> decode -> plan passes -> tiled model passes -> encode -> bytes.

Plain Python and torch, no TorchServe import: the TorchServe handler and the Triton binding are thin
adapters over ``Enhancer``, so the same input gives the same output on both.

Three stages, so adapters can isolate errors per request and share model calls across requests:
``prepare`` (options, decode, limits; raises EnhanceError), ``run`` (the model passes of many jobs
together; a job that fails gets its own error), ``finish`` (encode; raises EnhanceError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from enhancer import catalog
from enhancer.admission import Estimator, Throughput, largest_scale, work
from enhancer.card import ModelCard
from enhancer.compare import compare_size, side_by_side
from enhancer.contract import (
    FACES_HEADER,
    FACES_UNAVAILABLE,
    MODEL_HEADER,
    MODEL_ROLES,
    NATIVE_FILE,
    SCALE_USED_HEADER,
)
from enhancer.errors import (
    Busy,
    EnhanceError,
    InternalError,
    OptionError,
    OutOfMemory,
    PayloadTooLarge,
    TooMuchWork,
)
from enhancer.faces import FacePath
from enhancer.family import DENOISE_LEVELS, blend, check_family, snap
from enhancer.imaging import (
    CONTENT_TYPES,
    FORMAT_MAX_SIDE,
    Picture,
    check_output_format,
    encode_picture,
    fill_transparent,
    load_picture,
    open_image,
    resize,
    resolve_format,
)
from enhancer.imaging.metadata import apply_metadata_option
from enhancer.options import Options, model_name, parse_options, smallest_tile
from enhancer.passes import Pass, auto_scale, output_size, plan_passes
from enhancer.runner import ModelRunner, TileOutOfMemory, is_out_of_memory, out_of_memory_error
from enhancer.settings import EnhancerSettings
from enhancer.tiling import tiled_apply

logger = logging.getLogger(__name__)

# TorchServe's own default when model-config.yaml sets no responseTimeout (the budget's base).
DEFAULT_RESPONSE_TIMEOUT = 120


@dataclasses.dataclass
class Result:
    """An encoded output image."""

    data: bytes
    content_type: str
    format: str
    width: int
    height: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class Job:
    """One request between the stages."""

    options: Options
    picture: Picture
    format: str
    target: tuple[int, int]
    plan: list[Pass]
    denoise: float | None = None  # the level it runs at, when the engine has a model family
    estimate: float | None = None  # seconds it should take, when the engine admits by cost
    color: torch.Tensor | None = None  # the enhanced colour planes once ``run`` succeeded
    faces: str | None = None  # X-Enhance-Faces: faces found, or "unavailable" (faces.py)
    error: EnhanceError | None = None
    model: str | None = None  # the served model the request named (``model`` option)
    engine: Enhancer | None = None  # the engine of that model, when it is not the default's


def _family_levels(
    clean: ModelRunner,
    clean_path: Path,
    card: ModelCard,
    restore_path: Path,
    device: str | torch.device,
    settings: EnhancerSettings,
) -> dict[float, ModelRunner]:
    """A runner per denoise level: the clean model at 0, the restore model at 1, blends between."""
    restore_card = ModelCard.load(restore_path.with_suffix(".json"))
    restore_card.verify(restore_path)
    check_family(card, restore_card)
    device = torch.device(device)
    restore_module = torch.jit.load(str(restore_path), map_location="cpu").eval()
    clean_module = torch.jit.load(str(clean_path), map_location="cpu").eval()
    levels = {0.0: clean}
    for level in DENOISE_LEVELS[1:]:
        if level == 1.0:
            args = (restore_path, restore_card, device, settings.precision, settings.backend)
            levels[level] = ModelRunner(*args)
            continue
        mixed = blend(clean_module, restore_module, level)
        digest = hashlib.sha256(f"{card.sha256}:{restore_card.sha256}:{level}".encode()).hexdigest()
        levels[level] = ModelRunner(
            clean_path,
            card,
            device,
            settings.precision,
            settings.backend,
            module=mixed,
            digest=digest,
        )
    return levels


def native_beside(model_path: str | Path) -> Path | None:
    """The native 4x model (``enhancer4.pt`` with its card) in the folder of ``model_path``, or
    None when it is not there (or is the model itself): every door passes it to ``Enhancer.load``
    so that the server, ``enhance`` and Triton answer alike."""
    native = Path(model_path).with_name(NATIVE_FILE)
    if native == Path(model_path) or not native.is_file():
        return None
    return native if native.with_suffix(".json").is_file() else None


def _default_tile(runner: ModelRunner, card: ModelCard, settings: EnhancerSettings) -> int:
    """The tile a model runs at unless a request sets one: the card's, or for a dynamic model on
    OpenVINO the larger tile that backend is fastest at (fewer, bigger calls)."""
    if runner.backend == "openvino" and card.dynamic and settings.openvino_tile:
        return max(card.tile, settings.openvino_tile // card.multiple * card.multiple)
    return card.tile


def _native_runner(
    path: Path, card: ModelCard, device: str | torch.device, settings: EnhancerSettings
) -> ModelRunner:
    """The native 4x model of a scale-2 (or scale-1) card, its own card beside it, verified.

    Raises:
        ValueError: its card is invalid, does not match the file, or is not scale 4; or the
            engine's card is not scale 1 or 2.
    """
    native_card = ModelCard.load(path.with_suffix(".json"))
    native_card.verify(path)
    if native_card.scale != 4 or card.scale > 2:
        raise ValueError(
            f"{path.name}: a native model is a scale-4 card beside a scale-1 or scale-2 one, "
            f"not scale {native_card.scale} beside scale {card.scale}"
        )
    return ModelRunner(
        path, native_card, torch.device(device), settings.precision, settings.backend
    )


def configure_cpu_threads(settings: EnhancerSettings) -> int:
    """Use every core this process may run on (TorchServe starts workers with OMP_NUM_THREADS=1)."""
    threads = settings.cpu_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


class Enhancer:
    """Runs one model card's TorchScript model on images.

    Args:
        runner: the loaded model.
        card: its card.
        settings: limits and knobs.
    """

    def __init__(
        self,
        runner: ModelRunner,
        card: ModelCard,
        settings: EnhancerSettings,
        levels: Mapping[float, ModelRunner] | None = None,
        native: ModelRunner | None = None,
    ):
        self.runner = runner
        self.card = card
        self.settings = settings
        # denoise level -> its model, when a clean/restore family is loaded (family.py)
        self.levels = dict(levels or {})
        self.default_denoise = snap(settings.denoise, tuple(self.levels)) if self.levels else None
        if self.levels:
            self.runner = self.levels[self.default_denoise]
        # The tile a request runs at unless it sets one: the card's, or for a dynamic model on
        # OpenVINO the larger tile that backend is fastest at (fewer, bigger calls).
        self.tile = _default_tile(self.runner, card, settings)
        # The native 4x model (passes.py): the last pass of scales of 4 and more, when loaded.
        self.native = native
        self.native_tile = None if native is None else _default_tile(native, native.card, settings)
        self.device = runner.device
        self.batch_size = (
            settings.tile_batch_gpu if self.device.type == "cuda" else settings.tile_batch_cpu
        )
        # Admission by cost (admission.py): off until ``admit_within`` gives a budget.
        self.budget: float | None = None
        self.throughput: Throughput | None = None
        # The face path (faces.py), when a face model is served and the detector is installed.
        self.faces: FacePath | None = None
        # The served models by name (catalog.py; ``model`` option): this engine's own model (or
        # pair), and the others in its folder, loaded on demand into ``loaded``, the least
        # recently used unloaded beyond ``settings.max_loaded_models``.
        self.catalog: dict[str, catalog.Entry] = {}
        self.loaded: OrderedDict[str, Enhancer] = OrderedDict()
        self._loading = threading.Lock()

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        card_path: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        settings: EnhancerSettings | None = None,
        restore_path: str | Path | None = None,
        face_path: str | Path | None = None,
        extra_models: Sequence[str | Path] = (),
        native_path: str | Path | None = None,
    ) -> Enhancer:
        """Load a model and its card, refusing a model whose sha256 does not match the card.

        Args:
            model_path: the TorchScript file.
            card_path: its card; default: the model path with a .json suffix.
            device: "cpu", "cuda", "cuda:1", ...
            settings: defaults to ``EnhancerSettings()``.
            restore_path: the ``restore`` model of the same family as this (``clean``) one, with
                its card beside it: enables the ``denoise`` option (family.py).
            face_path: the face model (``face.pt``, card beside it): enables ``faces=auto``
                where the detector's weights are installed (faces.py); else faces are reported
                unavailable.
            extra_models: other models (``.pt``, card beside each) a request may name with the
                ``model`` option (catalog.py; ``catalog.find_models`` finds those of a folder).
                Only their cards are read now; each is loaded, and its file checked against its
                card, when a request first names it.
            native_path: the native 4x model of this (scale-2) model (``enhancer4.pt``, card
                beside it): the last pass of scales of 4 and more (passes.py), unless the
                setting ``native_4x`` is false; requests at another denoise level than the clean
                model's keep 2x passes.

        Raises:
            ValueError: invalid card, or a model file that does not match it.
        """
        model_path = Path(model_path)
        card = ModelCard.load(card_path or model_path.with_suffix(".json"))
        card.verify(model_path)
        settings = settings or EnhancerSettings()
        runner = ModelRunner(
            model_path, card, torch.device(device), settings.precision, settings.backend
        )
        levels = None
        if restore_path is not None:
            levels = _family_levels(runner, model_path, card, Path(restore_path), device, settings)
        logger.info(
            "Loaded %s %s (scale %d, tile %d, overlap %d) on %s in %s with %s",
            card.name,
            card.version,
            card.scale,
            card.tile,
            card.overlap,
            runner.device,
            runner.dtype,
            runner.backend,
        )
        native = None
        if native_path is not None:
            native = _native_runner(Path(native_path), card, device, settings)
        engine = cls(runner, card, settings, levels, native)
        restore_card = None
        if restore_path is not None:
            restore_card = ModelCard.load(Path(restore_path).with_suffix(".json"))
        engine.catalog = catalog.build(
            model_path,
            card,
            Path(restore_path) if restore_path is not None else None,
            restore_card,
            [Path(path) for path in extra_models],
        )
        if len(engine.catalog) > (2 if levels else 1):
            logger.info(
                "serving %d models: %s (at most %d loaded at once besides the default)",
                len(engine.catalog),
                ", ".join(engine.catalog),
                settings.max_loaded_models,
            )
        if face_path is not None:
            engine.faces = FacePath.load(Path(face_path), torch.device(device), settings)
            if engine.faces is None:
                logger.warning(
                    "face model given but no detector weights (pip install --no-deps "
                    "facenet-pytorch): faces unavailable"
                )
        return engine

    # -- stage 1 ---------------------------------------------------------------------------------

    def prepare(self, data: bytes, raw_options: Mapping[str, object] | None = None) -> Job:
        """Validate options, check limits from the header, decode, and plan.

        Raises:
            EnhanceError: 400, 413 or 415, before any model work.
        """
        raw_options = raw_options or {}
        if "model" in raw_options:
            name = model_name(raw_options["model"])
            entry = self._entry(name)
            if entry.role == "extra":
                if "denoise" in raw_options:
                    raise OptionError(
                        "denoise",
                        f"blends the clean and restore models; it does not combine with "
                        f"model={name} (leave model out to use it)",
                    )
                engine = self.engine_for(name)
                rest = {key: value for key, value in raw_options.items() if key != "model"}
                job = engine.prepare(data, rest)
                job.model, job.engine = name, engine
                return job
        options = parse_options(raw_options, self.card, self.settings)
        denoise = self._denoise_level(options)
        image, fmt = open_image(data, self.settings.max_input_pixels)
        if options.scale_auto:
            options = dataclasses.replace(
                options, scale=float(self._auto_scale(image, fmt, options))
            )
        self._check_output_pixels(image.size, options.scale)
        estimate = self._check_cost(image.size, options)
        picture = load_picture(image, data, fmt)
        width, height = picture.size
        out_format = resolve_format(options.format, picture)
        target = output_size(width, height, options.scale)
        check_output_format(out_format, target)
        self._check_restoring_passes(target, options)
        if options.compare:
            self._check_compare(target, out_format)
        plan = plan_passes(
            width,
            height,
            options.scale,
            level=options.level,
            enhance_first=options.enhance_first,
            model_scale=self.card.scale,
            native=self._native_scale(denoise),
        )
        job = Job(options, picture, out_format, target, plan, denoise, estimate)
        job.model = options.model
        return job

    # -- several models (catalog.py) -------------------------------------------------------------

    def _entry(self, name: str) -> catalog.Entry:
        """The served model called ``name``.

        Raises:
            OptionError: (400) no served model has that name; the message lists those that do.
        """
        entry = self.catalog.get(name)
        if entry is None:
            served = ", ".join(self.catalog) or self.card.name
            raise OptionError("model", f"'{name[:64]}' is not a served model (served: {served})")
        return entry

    def engine_for(self, name: str) -> Enhancer:
        """The engine of the served model ``name`` (an ``extra`` one), loading it if needed.

        At most ``settings.max_loaded_models`` such engines stay loaded: loading one more unloads
        the least recently used (its jobs still in flight keep it until they are answered).
        Loading checks the file against its card, and, when this engine admits by cost,
        calibrates the new one within the same budget.

        Raises:
            InternalError: (500) the model could not be loaded (logged with the reason).
        """
        with self._loading:  # one load at a time; a second request for it waits, then finds it
            engine = self.loaded.get(name)
            if engine is not None:
                self.loaded.move_to_end(name)
                return engine
            entry = self.catalog[name]
            started = time.perf_counter()
            try:
                engine = Enhancer.load(entry.path, device=self.device, settings=self.settings)
                engine.faces = self.faces
                if self.budget is not None:
                    engine.admit_within(self.budget)
            except Exception:  # noqa: BLE001 - a bad extra model fails its requests, not the worker
                logger.exception("loading model '%s' from %s failed", name, entry.path)
                raise InternalError(
                    f"model '{name}' could not be loaded; see the server log"
                ) from None
            self.loaded[name] = engine
            while len(self.loaded) > self.settings.max_loaded_models:
                evicted, old = self.loaded.popitem(last=False)
                del old  # its weights go with the last job that holds it
                self.runner.release_memory()  # on a GPU, hand the cached blocks back
                logger.info("unloaded model '%s' (the least recently used)", evicted)
            logger.info(
                "loaded model '%s' in %.1f s (%d of at most %d loaded: %s)",
                name,
                time.perf_counter() - started,
                len(self.loaded),
                self.settings.max_loaded_models,
                ", ".join(self.loaded),
            )
            return engine

    def models(self) -> dict[str, object]:
        """The listing of the served models (catalog.listing), with how a request picks them:
        ``pair`` (a request without ``model`` blends the clean/restore pair with ``denoise``)
        and ``max_loaded`` (the models named by requests that stay loaded at once)."""
        return {
            "models": catalog.listing(self.catalog, list(self.loaded)),
            "pair": bool(self.levels),
            "max_loaded": self.settings.max_loaded_models,
        }

    def _auto_scale(self, image: Image.Image, fmt: str, options: Options) -> int:
        """``scale=auto`` for an image not yet decoded (passes.auto_scale; orientation does not
        change a whole factor's choice), also within the time budget when one is set."""
        output = options.format
        if output == "auto":  # the longest side of what resolve_format can answer
            output = {"JPEG": "jpeg", "WEBP": "webp"}.get(fmt, "png")
        width, height = image.size
        scale = auto_scale(
            width,
            height,
            max_scale=self.settings.max_scale,
            max_output_pixels=self.settings.max_output_pixels,
            max_side=FORMAT_MAX_SIDE[output],
        )
        if self.budget is None or self.throughput is None:
            return scale
        return self.estimator().fit_scale(width, height, scale, options)

    def _native_scale(self, denoise: float | None) -> int | None:
        """4 when a request's enlarging may end in a native 4x pass: the model is loaded, the
        ``native_4x`` setting is on, and the request runs the clean model (no denoise blend:
        the native model has no restore partner)."""
        if self.native is None or not self.settings.native_4x or denoise not in (None, 0.0):
            return None
        return self.native.card.scale

    def _denoise_level(self, options: Options) -> float | None:
        """The precomputed level a request runs at, or None for an engine of one model."""
        if options.model is not None:
            role = self._entry(options.model).role
            if role in MODEL_ROLES:  # one end of the pair: 0 (clean) or 1 (restore)
                if options.denoise is not None:
                    raise OptionError(
                        "denoise",
                        f"blends the clean and restore models; it does not combine with "
                        f"model={options.model} (leave model out to use it)",
                    )
                return DENOISE_LEVELS[0] if role == MODEL_ROLES[0] else DENOISE_LEVELS[-1]
        if not self.levels:
            if options.denoise is not None:
                raise OptionError(
                    "denoise",
                    "this server runs one model; denoise needs its clean and restore pair",
                )
            return None
        if options.denoise is None:
            return self.default_denoise
        return snap(options.denoise, tuple(self.levels))

    def _check_restoring_passes(self, target: tuple[int, int], options: Options) -> None:
        """A restoring pass at the output size (``level`` above 1) makes the model's own output,
        ``card.scale`` times larger per side, before resizing it back: that must fit the cap."""
        made = target[0] * target[1] * self.card.scale**2
        if options.level > 1 and made > self.settings.max_output_pixels:
            largest = self.settings.max_output_pixels // self.card.scale**2
            raise PayloadTooLarge(
                f"level {options.level} restores the {target[0]}x{target[1]} output at "
                f"{self.card.scale}x inside ({made:,} pixels); the limit is "
                f"{self.settings.max_output_pixels:,}: use level 1, or a smaller scale "
                f"(outputs up to {largest:,} pixels)"
            )

    def _check_compare(self, target: tuple[int, int], fmt: str) -> None:
        width, height = compare_size(*target)
        if width * height > self.settings.max_output_pixels:
            raise PayloadTooLarge(
                f"compare image too large: {width}x{height} = {width * height:,} pixels; "
                f"the limit is {self.settings.max_output_pixels:,} pixels: use a smaller scale"
            )
        check_output_format(fmt, (width, height))

    def _check_output_pixels(self, size: tuple[int, int], scale: float) -> None:
        width, height = output_size(size[0], size[1], scale)
        if width * height > self.settings.max_output_pixels:
            raise PayloadTooLarge(
                f"output image too large: {width}x{height} = {width * height:,} pixels "
                f"at scale {scale:g}; "
                f"the limit is {self.settings.max_output_pixels:,} pixels"
            )

    # -- admission by cost (admission.py) --------------------------------------------------------

    def admit_within(self, budget: float, throughput: Throughput | None = None) -> Throughput:
        """Refuse from now on every request estimated to take more than ``budget`` seconds.

        Args:
            budget: seconds one model call of the server may take (a share of its timeout).
            throughput: the speed to estimate with; default: measured now (``calibrate``).

        Returns:
            The throughput the estimates use.
        """
        self.throughput = throughput or self.calibrate()
        self.budget = budget
        return self.throughput

    def admit_by_cost(self, model_config: Mapping[str, object] | None) -> float | None:
        """Admission as every door applies it: calibrate, then refuse what is estimated over
        ``time_budget_share`` of the model config's ``responseTimeout`` (TorchServe's default,
        120 s, when it sets none); nothing when the share is 0.

        Args:
            model_config: the parsed model-config.yaml (``responseTimeout``).

        Returns:
            The budget in seconds, or None when admission by cost is off.
        """
        if self.settings.time_budget_share <= 0:
            return None
        timeout = (model_config or {}).get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT)
        budget = float(timeout) * self.settings.time_budget_share
        self.admit_within(budget)
        logger.info(
            "admission by cost: a batch may take %.0f s (%g of responseTimeout %s s)",
            budget,
            self.settings.time_budget_share,
            timeout,
        )
        return budget

    def calibrate(self, side: int | None = None) -> Throughput:
        """Measure this engine's own speed: a noise image of ``side`` x ``side`` (default: the
        tile, at most 256) enhanced 2x to PNG through all three stages, twice; the second run is
        timed (the first warms the backend up). Noise is the worst case for the encoder, and one
        window smaller than the tile costs more per pixel than the tiles of a large image: the
        estimates lean to the safe side. 2-6 s of a worker's start on this CPU, with the model."""
        side = side or min(self.tile, 256)
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
        data = buffer.getvalue()
        options = {"scale": "2", "format": "png"}
        # calibrating is never refused, whatever the limits and the budget
        budget, settings = self.budget, self.settings
        self.budget = None
        self.settings = dataclasses.replace(
            settings,
            max_input_pixels=max(settings.max_input_pixels, side * side),
            max_output_pixels=max(settings.max_output_pixels, 4 * side * side),
            max_output_bytes=max(settings.max_output_bytes, 16 * side * side),
        )
        try:
            for _ in range(2):
                started = time.perf_counter()
                job = self.prepare(data, options)
                prepared = time.perf_counter()
                self.run([job])
                ran = time.perf_counter()
                self.finish(job)
                finished = time.perf_counter()
        finally:
            self.budget, self.settings = budget, settings
        model_pixels, output_pixels = work(side, side, 2.0, self.card, self.tile)
        throughput = Throughput(
            (ran - prepared) / model_pixels,
            (prepared - started + finished - ran) / output_pixels,
            self.runner.backend,
            str(self.device),
        )
        logger.info("calibrated on a %dx%d noise image: %s", side, side, throughput.describe())
        return throughput

    def estimate(
        self,
        width: int,
        height: int,
        scale: float,
        tile: int | None = None,
        level: int = 1,
        enhance_first: bool = False,
    ) -> float:
        """Seconds enhancing a ``width`` x ``height`` image ``scale`` times (with ``level`` and
        ``enhance_first`` as the options) should take here.

        Raises:
            RuntimeError: the engine was not calibrated (``admit_within``, ``calibrate``).
        """
        return self.estimator().seconds(width, height, scale, tile, level, enhance_first)

    def estimator(self) -> Estimator:
        """The one estimator of this engine's costs (admission.py), as the page gets it too
        (``Estimator.to_json``).

        Raises:
            RuntimeError: the engine was not calibrated (``admit_within``, ``calibrate``).
        """
        if self.throughput is None:
            raise RuntimeError("estimate() needs a throughput: call admit_within() first")
        return Estimator(
            self.throughput,
            self.card,
            self.tile,
            self.budget,
            max_scale=self.settings.max_scale,
            max_output_pixels=self.settings.max_output_pixels,
            max_tile=self.settings.max_tile,
        )

    def _check_cost(self, size: tuple[int, int], options: Options) -> float | None:
        """The request's estimated seconds; TooMuchWork (413) when they are over the budget."""
        if self.budget is None or self.throughput is None:
            return None
        width, height = size
        tile = options.tile or self.tile
        passes = (options.level, options.enhance_first)
        seconds = self.estimate(width, height, options.scale, tile, *passes)
        if seconds <= self.budget:
            return seconds

        def fits(scale: float) -> bool:
            out_w, out_h = output_size(width, height, scale)
            return (
                out_w * out_h <= self.settings.max_output_pixels
                and self.estimate(width, height, scale, tile, *passes) <= self.budget
            )

        best = largest_scale(fits, options.scale)
        head = (
            f"too much work: {width}x{height} at scale {options.scale:g} needs about "
            f"{seconds:.0f} s here, over the time budget of {self.budget:.0f} s per request; "
        )
        if best is not None:
            raise TooMuchWork(f"{head}the largest scale that fits this image is {best:g}", best)
        # even scale 1 does not fit: say how small an image would, at the asked scale
        shrink = math.sqrt(self.budget / seconds)
        for _ in range(40):
            smaller = (max(1, int(width * shrink)), max(1, int(height * shrink)))
            if self.estimate(*smaller, options.scale, tile, *passes) <= self.budget:
                break
            shrink *= 0.95
        raise TooMuchWork(
            f"{head}no scale fits this image; about {smaller[0]}x{smaller[1]} would at scale "
            f"{options.scale:g}",
            None,
        )

    def admit_batch(self, items: Sequence[Job | EnhanceError]) -> list[Job | EnhanceError]:
        """The items of one model call, with a Busy (503) error in place of each job that fits the
        budget alone but not after the jobs before it (the whole call must end in time)."""
        if self.budget is None:
            return list(items)
        admitted = []
        total = 0.0
        for item in items:
            if isinstance(item, Job) and item.estimate is not None:
                if total > 0 and total + item.estimate > self.budget:
                    item = Busy(
                        f"busy: this image needs about {item.estimate:.0f} s and the worker's "
                        f"current batch already {total:.0f} s of its {self.budget:.0f} s budget; "
                        "retry in a moment"
                    )
                else:
                    total += item.estimate
            admitted.append(item)
        return admitted

    # -- stage 2 ---------------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> None:
        """Enhance the prepared jobs together; sets ``job.color`` or ``job.error`` on each."""
        jobs = [job for job in jobs if job.error is None]
        others: dict[int, list[Job]] = {}
        for job in jobs:  # jobs of another served model run on its engine
            if job.engine is not None and job.engine is not self:
                others.setdefault(id(job.engine), []).append(job)
        for group in others.values():
            group[0].engine.run(group)
        jobs = [job for job in jobs if job.engine is None or job.engine is self]
        if not jobs:
            return
        try:
            colors = self._enhance(
                [self._model_input(job.picture) for job in jobs],
                [job.plan for job in jobs],
                [job.options for job in jobs],
                [job.denoise for job in jobs],
            )
        except OutOfMemory as error:
            if len(jobs) == 1:
                jobs[0].error = error
                return
            # a shared batch did not fit: give each request its own chance
            logger.warning(
                "out of memory on %d requests together; running them one by one", len(jobs)
            )
            for job in jobs:
                self.run([job])
            return
        except Exception:  # noqa: BLE001 - one request's fault must not fail the others
            if len(jobs) == 1:
                logger.exception("enhancing one request failed")
                jobs[0].error = InternalError()
                return
            logger.exception(
                "enhancing %d requests together failed; retrying one by one", len(jobs)
            )
            for job in jobs:
                self.run([job])
            return
        for job, color in zip(jobs, colors, strict=True):
            job.color = color
            self._restore_faces(job)

    def _restore_faces(self, job: Job) -> None:
        """The face path (faces.py) over a job's enhanced colour, when asked for and served."""
        if job.options.faces == "off":
            return
        if self.faces is None:
            job.faces = FACES_UNAVAILABLE
            return
        try:
            job.color, found = self.faces.apply(self._model_input(job.picture), job.color)
        except Exception:  # noqa: BLE001 - a face pass never fails a request
            logger.exception("the face path failed; answering the general output")
            job.faces = "error"
            return
        job.faces = str(found)

    def _model_input(self, picture: Picture) -> torch.Tensor:
        color = picture.color.to(self.device, non_blocking=True)
        if picture.alpha is not None:
            color = fill_transparent(color, picture.alpha.to(self.device, non_blocking=True))
        return color

    def _enhance(
        self,
        colors: list[torch.Tensor],
        plans: list[list[Pass]],
        options: list[Options],
        levels: list[float | None] | None = None,
    ) -> list[torch.Tensor]:
        """All passes of all images, each pass's tiles shared among the images that have it
        (and the same tile size and denoise level)."""
        current = list(colors)
        levels = levels or [None] * len(colors)
        for index in range(max(len(plan) for plan in plans)):
            active = [i for i, plan in enumerate(plans) if index < len(plan)]
            groups: dict[tuple[int, float | None, bool], list[int]] = {}
            for i in active:
                if plans[i][index].native:  # the native 4x model, at its own tile
                    key = (self.native_tile, None, True)
                else:
                    key = (options[i].tile or self.tile, levels[i], False)
                groups.setdefault(key, []).append(i)
            for (tile, level, native), members in groups.items():
                inputs = []
                for i in members:
                    step = plans[i][index]
                    # a scale-1 model restores at the target size: resize first
                    first = self.card.scale == 1 and not native
                    inputs.append(resize(current[i], step.dst) if first else current[i])
                if native:
                    runner = self.native
                else:
                    runner = self.runner if level is None else self.levels[level]
                outputs = self._model_pass(inputs, tile, runner)
                for i, out in zip(members, outputs, strict=False):
                    current[i] = resize(out, plans[i][index].dst)  # no-op when already exact
        for i, opts in enumerate(options):
            if opts.strength < 1.0:
                plain = resize(colors[i], plans[i][-1].dst)
                current[i] = torch.lerp(plain, current[i], opts.strength)
        return current

    def _model_pass(
        self, inputs: list[torch.Tensor], tile: int, runner: ModelRunner
    ) -> list[torch.Tensor]:
        """One tiled pass over the inputs, with the precision guard and out-of-memory retries
        (the runner's own card: the engine's, or the native 4x model's)."""
        card = runner.card
        apply = partial(
            tiled_apply,
            inputs,
            scale=card.scale,
            overlap=card.overlap,
            multiple=card.multiple,
            dynamic=card.dynamic,
            batch_size=self.batch_size,
            blend=card.blend,
        )
        while True:
            try:
                outputs = apply(runner, tile=tile)
                if runner.reduced_precision and runner.take_bad_flag():
                    runner.fallbacks += 1
                    logger.warning(
                        "%s output had NaN or black tiles; rerunning the pass in float32",
                        runner.dtype,
                    )
                    outputs = apply(partial(runner, full_precision=True), tile=tile)
                return outputs
            except TileOutOfMemory:
                smaller = tile // 2 // card.multiple * card.multiple
                if card.dynamic and smaller >= smallest_tile(card):
                    logger.warning(
                        "one %d tile did not fit; retrying the pass with %d tiles", tile, smaller
                    )
                    tile = smaller
                    continue
                raise out_of_memory_error(self.device, tile) from None
            except Exception as error:  # noqa: BLE001 - only allocation failures are mapped
                if not is_out_of_memory(error):
                    raise
                runner.release_memory()
                raise OutOfMemory(
                    f"out of memory on {self.device.type} holding the images: try a smaller scale"
                ) from None

    # -- stage 3 ---------------------------------------------------------------------------------

    def finish(self, job: Job) -> Result:
        """Encode a job that ``run`` completed.

        Raises:
            EnhanceError: the job's own error from ``run``, or 413 when the encoded image is over
            ``max_output_bytes``.
        """
        if job.engine is not None and job.engine is not self:
            result = job.engine.finish(job)
            result.headers[MODEL_HEADER] = job.model
            return result
        if job.error is not None:
            raise job.error
        if job.color is None:
            raise RuntimeError("finish() called before run() completed the job")
        alpha = job.picture.alpha
        if alpha is not None:
            alpha = resize(alpha.to(self.device), job.target)
        color = job.color
        if job.options.compare:
            plain = resize(job.picture.color.to(self.device), job.target)
            color, alpha = side_by_side(plain, color, alpha), None
        quality = job.options.quality or {
            "jpeg": self.settings.jpeg_quality,
            "avif": self.settings.avif_quality,
        }.get(job.format, self.settings.webp_quality)
        data = encode_picture(
            color,
            alpha,
            grayscale=job.picture.grayscale,
            bits=job.picture.bits,
            fmt=job.format,
            quality=quality,
            meta=apply_metadata_option(job.picture.meta, job.options.metadata),
            png_compress_level=self.settings.png_compress_level,
        )
        job.color = color = None  # free the device memory as soon as the bytes exist
        if len(data) > self.settings.max_output_bytes:
            raise PayloadTooLarge(
                f"encoded output is {len(data):,} bytes; "
                f"the limit is {self.settings.max_output_bytes:,} bytes: "
                "ask for jpeg or webp, or a smaller scale"
            )
        headers = {SCALE_USED_HEADER: f"{job.options.scale:g}"}
        if job.denoise is not None and job.model is None:
            headers["X-Enhance-Denoise"] = f"{job.denoise:g}"
        if job.model is not None:
            headers[MODEL_HEADER] = job.model
        if job.faces is not None:
            headers[FACES_HEADER] = job.faces
        width, height = compare_size(*job.target) if job.options.compare else job.target
        return Result(data, CONTENT_TYPES[job.format], job.format, width, height, headers)

    # -- conveniences ----------------------------------------------------------------------------

    def enhance(self, data: bytes, raw_options: Mapping[str, object] | None = None) -> Result:
        """All three stages for one image.

        Raises:
            EnhanceError: anything wrong with the request (400, 413, 415, 507).
        """
        job = self.prepare(data, raw_options)
        self.run([job])
        return self.finish(job)

    def enhance_batch(
        self, requests: Sequence[tuple[bytes, Mapping[str, object]]]
    ) -> list[Result | EnhanceError]:
        """Several requests at once, sharing model calls; each gets its result or its own error."""
        items = [self.try_prepare(data, raw_options) for data, raw_options in requests]
        # the whole batch must end within the time budget: late jobs that would not are 503
        items = self.admit_batch(items)
        self.run([item for item in items if isinstance(item, Job)])
        return [self.try_finish(item) for item in items]

    def try_prepare(
        self, data: bytes, raw_options: Mapping[str, object] | None
    ) -> Job | EnhanceError:
        """``prepare``, returning the request's error instead of raising it.

        A fault that is not an EnhanceError (a bug) is logged and becomes an InternalError (500)
        for this request alone, so the other requests of a batch carry on.
        """
        try:
            return self.prepare(data, raw_options)
        except EnhanceError as error:
            return error
        except Exception:  # noqa: BLE001 - one request's fault must not fail the others
            logger.exception("preparing a request failed")
            return InternalError()

    def try_finish(self, item: Job | EnhanceError) -> Result | EnhanceError:
        """``finish`` for a job, or pass an error through; faults become InternalError as above."""
        if isinstance(item, EnhanceError):
            return item
        try:
            return self.finish(item)
        except EnhanceError as error:
            return error
        except Exception:  # noqa: BLE001 - one request's fault must not fail the others
            logger.exception("encoding a result failed")
            return InternalError()

    def upscale(
        self,
        rgb: torch.Tensor,
        scale: float,
        *,
        tile: int | None = None,
        denoise: float | None = None,
        level: int = 1,
        enhance_first: bool = False,
    ) -> torch.Tensor:
        """Enhance a float RGB tensor (3, H, W) in [0, 1] by ``scale``, as the service does
        (``denoise``, ``level``, ``enhance_first``: as the options).

        Returns:
            float32 (3, round(scale*H), round(scale*W)) in [0, 1], on the CPU.
        """
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got {tuple(rgb.shape)}")
        height, width = rgb.shape[1:]
        plan = plan_passes(
            width,
            height,
            scale,
            level=level,
            enhance_first=enhance_first,
            model_scale=self.card.scale,
            native=self._native_scale(self._denoise_level(Options(scale=scale, denoise=denoise))),
        )
        options = Options(
            scale=scale, tile=tile, denoise=denoise, level=level, enhance_first=enhance_first
        )
        (out,) = self._enhance(
            [rgb.to(self.device, torch.float32)], [plan], [options], [self._denoise_level(options)]
        )
        return out.cpu()
