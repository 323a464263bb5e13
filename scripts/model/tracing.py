"""Export's work: load a trained model, trace it, prove the trace, measure the context its tiles
need, write the card (``python -m scripts.export`` parses the arguments; what is proved is
documented there).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch

from enhancer.card import ModelCard, file_sha256
from scripts.model.unet import ContractWrapper, build_model, dynamic_unet


class ExportError(Exception):
    """The trace could not be proved; nothing usable was written."""


def load_fastai_learner(path: str) -> torch.nn.Module:
    """The model of a pickled fastai learner (``learn.export()``).

    The course defines FeatureLoss in its notebook, so the pickle names ``__main__.FeatureLoss``:
    ours is put there first, which is all unpickling needs (the loss itself is not used).
    """
    from fastai.learner import load_learner

    import __main__
    from scripts.model import feature_loss

    for name in ("FeatureLoss", "gram_matrix"):
        if not hasattr(__main__, name):
            setattr(__main__, name, getattr(feature_loss, name))
    return load_learner(path, cpu=True).model


class SpandrelModel(torch.nn.Module):
    """A model spandrel loaded, as the contract's module: RGB in [0, 1] in, the descriptor's own
    call (some architectures wrap the forward) and its clamp to [0, 1] out.

    Attributes:
        scale: the model's enlargement.
        multiple: input sides must be multiples of this: spandrel's ``multiple_of``, raised to its
            ``minimum`` when that is larger (so every window the engine cuts is big enough).
        dynamic_ok: False when spandrel asks for square inputs (then only the traced tile is
            served); otherwise export decides by checking the trace at other sizes.
        dtypes: the reduced precisions spandrel says the architecture supports.
    """

    def __init__(self, descriptor):
        super().__init__()
        self.model = descriptor.model
        # spandrel keeps the call in a private attribute; a plain forward when there is none
        self._call = getattr(descriptor, "_call_fn", None) or (lambda model, x: model(x))
        need = descriptor.size_requirements
        self.scale = int(descriptor.scale)
        self.multiple = max(int(need.multiple_of), int(need.minimum), 1)
        self.dynamic_ok = not need.square
        self.dtypes = [
            name
            for name, ok in (
                ("bfloat16", descriptor.supports_bfloat16),
                ("float16", descriptor.supports_half),
            )
            if ok
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.model, x).clamp(0, 1)


SPANDREL_REFUSALS = {
    "FaceSR": "a face restoration model ({arch}): it works on aligned face crops "
    "({minimum}x{minimum}), needs face detection, alignment and pasting back, which this "
    "service does not do; export a whole-image super-resolution or restoration model",
}


def load_spandrel(path: str) -> tuple[SpandrelModel, str, dict]:
    """A ``.pth``/``.safetensors`` file any spandrel architecture loads, checked to be an RGB
    image-to-image model of a scale the engine serves.

    Raises:
        ExportError: spandrel is missing or does not know the file, or the model is not one this
            service can serve (naming why).
    """
    try:
        import spandrel
    except ImportError:
        raise ExportError(
            "--spandrel needs the spandrel library: pip install -e '.[export]'"
        ) from None
    from enhancer.card import SCALES

    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise ExportError(
            f"{path}: spandrel {spandrel.__version__} does not recognise this model's "
            "architecture (not one of the architectures it supports, or not a model state dict)"
        ) from None
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ExportError(f"{path}: spandrel could not load it: {error}") from None
    arch = descriptor.architecture.name
    need = descriptor.size_requirements
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ExportError(
            f"{path} is a {descriptor.purpose} model ({arch}): it takes an image and a mask; "
            "this service serves image-to-image models only"
        )
    if descriptor.purpose in SPANDREL_REFUSALS:
        raise ExportError(
            f"{path} is "
            + SPANDREL_REFUSALS[descriptor.purpose].format(arch=arch, minimum=need.minimum)
        )
    channels = (descriptor.input_channels, descriptor.output_channels)
    if channels != (3, 3):
        raise ExportError(
            f"{path} is a {arch} model with {channels[0]} input and {channels[1]} output "
            "channels: the service runs RGB models (3 in, 3 out); a 1-channel (grayscale) model "
            "cannot enhance colour photos"
        )
    if descriptor.scale not in SCALES:
        raise ExportError(
            f"{path} is a {descriptor.scale}x {arch} model: the engine serves model scales {SCALES}"
        )
    model = SpandrelModel(descriptor)
    cfg = {
        "source": "spandrel",
        "id": descriptor.architecture.id,
        "purpose": descriptor.purpose,
        "tags": list(descriptor.tags),
        "source_file": Path(path).name,
        "source_sha256": file_sha256(path),
        "spandrel": spandrel.__version__,
        "size_requirements": {
            "minimum": need.minimum,
            "multiple_of": need.multiple_of,
            "square": need.square,
        },
        "spandrel_tiling": descriptor.tiling.name,
        "supports": {
            "float16": descriptor.supports_half,
            "bfloat16": descriptor.supports_bfloat16,
        },
    }
    return model, arch, cfg


def load_model(args) -> tuple[torch.nn.Module, str, dict]:
    """The eager module to trace, its arch name and its settings (for the card)."""
    if getattr(args, "spandrel", None):
        return load_spandrel(args.spandrel)
    if args.weights:
        ckpt = torch.load(args.weights, map_location="cpu", weights_only=False)
        arch, cfg = ckpt["arch"], ckpt["config"]
        if arch == "compact":
            model = build_model(arch, cfg)
            model.load_state_dict(ckpt["model"])
            # re-parameterised convs fold into plain 3x3 convs: the traced model is a plain U-Net
            model.fuse()
            return model, arch, model.config()
        else:
            net = dynamic_unet(
                cfg["body"], args.tile, cfg.get("self_attention", False), cfg.get("blur", True)
            )
            model = ContractWrapper(
                net, cfg.get("in_norm", "imagenet"), cfg.get("out_norm", "imagenet")
            )
        model.load_state_dict(ckpt["model"])
        return model, arch, cfg
    if args.learner:
        net = load_fastai_learner(args.learner)
        cfg = {"source": "fastai learner", "in_norm": args.in_norm, "out_norm": args.out_norm}
        return ContractWrapper(net, args.in_norm, args.out_norm), "dynamic_unet", cfg
    if args.fastai_weights:
        net = dynamic_unet(args.body, args.tile, args.self_attention, not args.no_blur)
        state = torch.load(args.fastai_weights, map_location="cpu", weights_only=False)
        # learn.save() stores {"model": ..., "opt": ...}; learn.save(with_opt=False) the bare dict
        net.load_state_dict(state["model"] if "model" in state and "opt" in state else state)
        cfg = {
            "body": args.body,
            "self_attention": args.self_attention,
            "blur": not args.no_blur,
            "in_norm": args.in_norm,
            "out_norm": args.out_norm,
        }
        return ContractWrapper(net, args.in_norm, args.out_norm), "dynamic_unet", cfg
    raise ExportError("give one of --spandrel, --weights, --learner, --fastai-weights")


def model_facts(model: torch.nn.Module, arch: str, tile: int) -> tuple[int, int, bool | None]:
    """(scale, multiple, dynamic): read off the module, and checked against a forward pass.

    ``dynamic`` is None for a spandrel model: export measures it on the trace (dynamic_trace).
    """
    if isinstance(model, SpandrelModel):
        check_spandrel_geometry(model, tile)
        return model.scale, model.multiple, None
    if arch == "compact":
        return model.scale, model.multiple, True
    # a DynamicUnet keeps the size; its ResNet body halves it 5 times. Its Python shape branches
    # (UnetBlock, ResizeToOrig) are frozen by the trace, so it is served at exactly ``tile``.
    return 1, 32, False


def check_spandrel_geometry(model: SpandrelModel, tile: int) -> None:
    """Verify the scale and multiple spandrel reports on the eager model: two sizes that are
    multiples (a square of at least 16 pixels, the smallest window an overlap of 8 allows, and a
    non-square one) give exactly ``scale`` times their size."""
    m = model.multiple
    side = -(-16 // m) * m
    for h, w in ((side, side), (side, side + m)):
        try:
            with torch.no_grad():
                out = model(torch.rand(1, 3, h, w))
        except Exception as error:  # noqa: BLE001 - any failure is the model's, reported as such
            raise ExportError(
                f"the model fails on a 1x3x{h}x{w} input (spandrel says multiples of {m} work): "
                f"{str(error).splitlines()[0][:200]}"
            ) from None
        if tuple(out.shape) != (1, 3, model.scale * h, model.scale * w):
            raise ExportError(
                f"the model turns 1x3x{h}x{w} into {tuple(out.shape)}, not the "
                f"{model.scale}x spandrel reports"
            )


def dynamic_trace(eager, traced, shapes, atol, generator) -> bool:
    """Whether the trace is valid at sizes other than the one it was traced at: equal to eager
    (within ``atol``) at every shape. A trace that freezes a size (a padding computed in Python,
    shape branches) fails here and is served at its tile only."""
    for n, h, w in shapes:
        x = torch.rand(n, 3, h, w, generator=generator)
        try:
            with torch.no_grad():
                want, got = eager(x), traced(x)
        except RuntimeError:
            return False
        if got.shape != want.shape or (got - want).abs().max().item() > atol:
            return False
    return True


def prove(eager, traced, shapes, scale, atol, generator) -> float:
    """Traced must equal eager on fresh inputs of every shape; returns the worst difference."""
    worst = 0.0
    for n, h, w in shapes:
        x = torch.rand(n, 3, h, w, generator=generator)
        with torch.no_grad():
            want, got = eager(x), traced(x)
        if got.shape != (n, 3, scale * h, scale * w):
            raise ExportError(
                f"output shape {tuple(got.shape)} for input {(n, 3, h, w)}: expected {scale}x"
            )
        if not torch.isfinite(got).all():
            raise ExportError(f"traced output has NaN/inf at input {(n, 3, h, w)}")
        if got.min() < 0 or got.max() > 1:
            raise ExportError(f"traced output leaves [0, 1] ({got.min():.3f}..{got.max():.3f})")
        diff = (got - want).abs().max().item()
        print(f"  {n}x3x{h}x{w} -> {tuple(got.shape)}: max |traced - eager| = {diff:.2e}")
        if diff > atol:
            raise ExportError(
                f"traced differs from eager by {diff:.2e} > {atol} at input {(n, 3, h, w)}"
            )
        worst = max(worst, diff)
    return worst


def check_dtypes(
    path: Path, tile: int, generator, supported: tuple[str, ...] = ("bfloat16", "float16")
) -> tuple[list[str], dict]:
    """float16/bfloat16 are listed only where the saved model, cast, gives finite output within
    2/255 mean and 0.1 max of float32 (checked on this machine's CPU), and only those in
    ``supported`` (for a spandrel model: what spandrel says its architecture supports)."""
    x = torch.rand(1, 3, tile, tile, generator=generator)
    with torch.no_grad():
        ref = torch.jit.load(str(path))(x)
    ok, report = ["float32"], {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        if name not in supported:
            report[name] = "not supported by the architecture (spandrel)"
            continue
        try:
            with torch.no_grad():
                out = torch.jit.load(str(path)).to(dtype)(x.to(dtype)).float()
        except RuntimeError as error:  # e.g. no float16 convolution on this CPU
            report[name] = f"not checked: {str(error).splitlines()[0][:80]}"
            continue
        mean, peak = (out - ref).abs().mean().item(), (out - ref).abs().max().item()
        good = bool(torch.isfinite(out).all()) and mean < 2 / 255 and peak < 0.1
        report[name] = {
            "mean_abs_diff": round(mean, 5),
            "max_abs_diff": round(peak, 4),
            "valid": good,
        }
        if good:
            ok.append(name)
    return ok, report


def measure_context(model, args, scale: int, multiple: int, dynamic: bool) -> tuple[int, dict]:
    """The overlap the model needs, measured on the photos (``--overlap auto``), or the given one
    checked on them: scripts/ops/overlap.py. Returns (overlap, the card's ``export.context``)."""
    from scripts.ops.overlap import load_photo, measure, photo_paths

    photos = [(path.name, load_photo(path)) for path in photo_paths(args.photos)]
    if not photos:
        raise ExportError(f"no photos in {args.photos}")

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    try:
        record = measure(
            run,
            photos,
            scale=scale,
            multiple=multiple,
            blend=args.blend,
            overlap=None if args.overlap == "auto" else int(args.overlap),
            check=args.check_photos,
        )
    except ValueError as error:
        raise ExportError(str(error)) from None
    record["photos_from"] = [str(p) for p in args.photos]
    return record["overlap"], record


def export(args) -> int:
    model, arch, cfg = load_model(args)
    model = model.float().eval()
    scale, multiple, dynamic = model_facts(model, arch, args.tile)
    if args.tile % multiple:
        raise ExportError(f"--tile {args.tile} must be a multiple of {multiple}")
    if args.overlap == "auto" and not args.photos:
        raise ExportError("--overlap auto needs photos (--photos) to measure it on")
    if args.overlap != "auto" and 3 * int(args.overlap) >= args.tile:
        raise ExportError(
            f"overlap {args.overlap} too large for tile {args.tile} (must be < tile/3)"
        )
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, args.tile, args.tile, generator=gen)
    print(f"tracing {arch} (scale {scale}, multiple {multiple}) at 1x3x{args.tile}x{args.tile}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # DynamicUnet's shape checks warn that the trace freezes them: proved below, at two
            # sizes
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example, check_inputs=[(torch.rand_like(example),)])
    except Exception as error:  # noqa: BLE001 - whatever the tracer hits, the model cannot ship
        detail = str(error).strip().splitlines()
        raise ExportError(
            f"{arch} cannot be traced to TorchScript at 1x3x{args.tile}x{args.tile}: "
            f"{detail[0][:300] if detail else type(error).__name__}"
        ) from None
    if dynamic is None:  # a spandrel model: is the trace valid at other sizes?
        side = -(-(args.tile // 2 + multiple) // multiple) * multiple
        trials = [(1, multiple * 3, multiple * 5), (1, side, side)]
        dynamic = model.dynamic_ok and dynamic_trace(model, traced, trials, args.atol, gen)
        print(f"  trace valid at other sizes: {dynamic}")
    other = args.other_size or (args.tile // 2 + multiple if dynamic else args.tile + 2 * multiple)
    other = -(-other // multiple) * multiple
    shapes = [(1, args.tile, args.tile), (2, args.tile, args.tile)]
    if dynamic:
        shapes += [(1, other, other), (1, multiple * 3, multiple * 5)]
    elif not isinstance(model, SpandrelModel):  # a DynamicUnet: proved one step larger too
        shapes.append((1, other, other))
    worst = prove(model, traced, shapes, scale, args.atol, gen)

    # write beside the target under temporary names and move into place only once all is proved,
    # so a failed export never leaves a half-written model or a card that does not match it
    final = Path(args.out)
    final.parent.mkdir(parents=True, exist_ok=True)
    out, card_path = (
        final.with_name(final.stem + ".tmp.pt"),
        final.with_name(final.stem + ".tmp.json"),
    )
    try:
        traced.save(str(out))
        reloaded = torch.jit.load(str(out))
        worst = max(
            worst, prove(model, reloaded, [(1, args.tile, args.tile)], scale, args.atol, gen)
        )
        spandrel_model = isinstance(model, SpandrelModel)
        supported = tuple(model.dtypes) if spandrel_model else ("bfloat16", "float16")
        dtypes, dtype_report = check_dtypes(out, args.tile, gen, supported)
        card = make_card(
            args, model, arch, cfg, out, scale, multiple, dynamic, dtypes, shapes, worst
        )
        if spandrel_model:
            card["license"] = args.license or "unknown"
        card["export"]["dtype_checks"] = dtype_report
        card["overlap"] = 0 if args.overlap == "auto" else int(args.overlap)
        card["blend"] = args.blend
        if args.photos:
            card["overlap"], card["export"]["context"] = measure_context(
                model, args, scale, multiple, dynamic
            )
        if 3 * card["overlap"] >= args.tile:
            raise ExportError(
                f"the model needs an overlap of {card['overlap']}: too large for tile {args.tile}"
                " (must be < tile/3)"
            )
        ModelCard.from_dict(card)  # the server's own validation
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(out, final)
        os.replace(card_path, final.with_suffix(".json"))
    finally:
        out.unlink(missing_ok=True)
        card_path.unlink(missing_ok=True)
    print(
        f"PASS: wrote {final} ({final.stat().st_size / 1e6:.1f} MB, "
        f"{card['params'] / 1e6:.2f}M params)"
        f" and {final.with_suffix('.json')}"
    )
    return 0


def make_card(
    args, model, arch, cfg, path, scale, multiple, dynamic, dtypes, shapes, worst
) -> dict:
    """The card: the engine's fields, then how the model was made (training settings from the
    run's args.yaml) and how it was proved. scripts/evaluate.py --write-card adds ``quality``."""
    card = {
        "name": args.name,
        "version": args.version,
        "scale": scale,
        "multiple": multiple,
        "tile": args.tile,
        "overlap": 0,
        "dtypes": dtypes,
        "sha256": file_sha256(path),
        "dynamic": dynamic,
        "arch": {"name": arch, **cfg},
        "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": path.stat().st_size,
        "export": {
            "traced_at": [1, 3, args.tile, args.tile],
            "proved_sizes": [list(s) for s in shapes],
            "max_abs_traced_vs_eager": worst,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    train_args = (
        Path(args.train_args)
        if args.train_args
        else (Path(args.weights).with_name("args.yaml") if args.weights else None)
    )
    if train_args and train_args.exists():
        card["training"] = training_record(train_args)
        if args.weights:
            card["training"].update(checkpoint_progress(Path(args.weights)))
    return card


def checkpoint_progress(path: Path) -> dict:
    """How far the run had got when ``path`` was written, for a checkpoint of a run still going
    (train.py's ckpt.pth: its args.yaml holds the settings, but the totals only at the end)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "cpu_s" not in ckpt:  # a finished run's model.pth: args.yaml has the totals
        return {}
    return {
        "steps": ckpt["steps"],
        "pixels": ckpt["pixels"],
        "wall_time_s": round(ckpt["wall_s"]),
        "cpu_time_s": round(ckpt["cpu_s"]),
        "checkpoint": f"{path.name}: mid-run, {ckpt['pixels'] / 1e9:.3f} of "
        f"{ckpt['budget'] / 1e9:.1f} G HR pixels",
    }


def training_record(path: Path, seen: tuple = ()) -> dict:
    """The run's args.yaml, with the runs it started from (``--init-weights``) chained under
    ``init_from`` and the totals of steps and wall time over the chain. Weights written by
    ``scripts/checkpoint.py weights`` name the checkpoint they came from: its run is the parent."""
    import yaml

    record = yaml.safe_load(path.read_text())
    steps, wall = record.get("steps", 0), record.get("wall_time_s", 0)
    init = record.get("init_weights")
    parent = Path(init).with_name("args.yaml") if init else None
    if init and Path(init).exists():
        try:
            source = torch.load(init, map_location="cpu", weights_only=True)
        except Exception:  # a full training checkpoint (fastai objects): its run is beside it
            source = None
        if isinstance(source, dict) and isinstance(source.get("from"), str):
            parent = Path(source["from"]).with_name("args.yaml")
            record["init_from_step"] = source.get("steps")
    seen = (*seen, Path(path).resolve())
    if parent and parent.exists() and parent.resolve() not in seen:
        previous = training_record(parent, seen)
        record["init_from"] = previous
        steps += previous.get("total_steps", previous.get("steps", 0))
        wall += previous.get("total_wall_time_s", previous.get("wall_time_s", 0))
    record["total_steps"], record["total_wall_time_s"] = steps, wall
    return record
