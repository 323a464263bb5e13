"""The batch command ``enhance``: enhance files and folders, in-process or through a running server.

    enhance photos/ -o enhanced/ --scale 4 --recursive
    enhance photo.heic old.tif -o enhanced/ --format png
    enhance photos/ -o enhanced/ --model model_store/clean.pt --restore model_store/restore.pt \\
        --denoise 0.5
    enhance photos/ -o enhanced/ --server http://127.0.0.1:8080/predictions/enhancer
    enhance photos/ -o enhanced/ --server http://127.0.0.1:8000/v2/models/enhancer --model clean

In-process (the default) it runs the same engine code path as the TorchServe handler
(``Enhancer.prepare``, ``run``, ``finish``, the settings of handlers/model-config.yaml), so a
file comes out byte for byte as the server would answer it for the same options. With ``--server``
it sends each file to a running TorchServe (a ``/predictions/NAME`` URL) through
``enhancer.client`` (the key is read from TorchServe's key file), or to a running Triton binding
(a ``/v2/models/NAME`` URL, ``scripts.triton_serve``) through ``tritonclient`` (the ``triton``
extra). ``--model`` names a file for the engine in-process; with ``--server``, or given a name
rather than a file, it is the ``model`` option: a served model by name (``clean``, ``restore``, an
exported model's card name).

Outputs: ``<output>/<path below the input folder>/<name>_x<scale>.<ext>``, the extension that of
the output format (``auto``: as the API's, so ``photo.heic`` becomes ``photo_x2.jpg``). A name that
is an input file, or that another input already claimed in this run, gets the input's own extension
added (``photo_heic_x2.jpg``): an input is never overwritten. An existing output is skipped unless
``--overwrite``. Each output is written to a temporary file beside it (``.enhance-*.part``) and
renamed into place, so an interrupted run leaves no half-written image; a later run removes
temporary files a killed run left behind. Bad files are reported and skipped; the summary counts
them and the exit status is 1 when any file failed (2 for a usage error, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from enhancer.contract import (
    ALLOWED_FORMATS,
    FILE_EXTENSIONS,
    FORMAT_ALIASES,
    FORMATS,
    INPUT_MEDIA_TYPES,
    MODEL_NAME,
    sniff_format,
)

TEMP_PREFIX = ".enhance-"
TEMP_SUFFIX = ".part"
# File names a folder scan takes as images (anything else is sniffed: an image without one of
# these names is still found; a file that is neither is left alone and counted).
IMAGE_SUFFIXES = frozenset(suffix for _, names in INPUT_MEDIA_TYPES.values() for suffix in names)
PACKAGE_DIR = Path(__file__).resolve().parent
# handlers/model-config.yaml: the server's settings (limits, default denoise), used in-process too.
MODEL_CONFIG = PACKAGE_DIR.parent / "model-config.yaml"
REPO_MODEL = PACKAGE_DIR.parents[1] / "model_store" / f"{MODEL_NAME}.pt"
# Where ``make run`` has TorchServe write its keys.
KEY_FILE = Path(".run") / "key_file.json"
REPO_KEY_FILE = PACKAGE_DIR.parents[1] / KEY_FILE
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class Failure(Exception):
    """One file could not be enhanced: ``status`` as the API would answer, and why."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclasses.dataclass
class Item:
    """One input file and where its output goes (relative to the output folder)."""

    source: Path
    relative: Path  # the input's path below its input folder (its name, for a file argument)


@dataclasses.dataclass
class Summary:
    enhanced: int = 0
    skipped: int = 0
    failed: int = 0
    not_images: int = 0
    megapixels: float = 0.0
    failures: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


# -- what to enhance -------------------------------------------------------------------------------


def collect(
    inputs: Sequence[Path], recursive: bool, output: Path
) -> tuple[list[Item], int, list[str]]:
    """The files to enhance, in a stable order.

    Returns:
        (items, files left alone as not images, problems with the arguments themselves).
    """
    items: list[Item] = []
    problems: list[str] = []
    not_images = 0
    output = output.resolve()
    for given in inputs:
        if given.is_file():
            items.append(Item(given, Path(given.name)))
        elif given.is_dir():
            root = given.resolve()
            walk = root.rglob("*") if recursive else root.iterdir()
            for path in sorted(walk):
                relative = path.relative_to(root)
                if any(part.startswith(".") for part in relative.parts):
                    continue  # hidden files and folders, our own temporary files among them
                if output != root and _inside(path, output):
                    continue  # earlier outputs in an output folder inside the input folder
                if not path.is_file():
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES or _looks_like_image(path):
                    items.append(Item(given / relative, relative))
                else:
                    not_images += 1
        else:
            problems.append(f"{given}: no such file or folder")
    return items, not_images, problems


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return False
    return sniff_format(head) in ALLOWED_FORMATS


def output_name(relative: Path, scale: float, fmt: str) -> Path:
    """``dir/photo.heic`` at scale 2 as JPEG -> ``dir/photo_x2.jpg``."""
    return relative.with_name(f"{relative.stem}_x{scale:g}.{FILE_EXTENSIONS[fmt]}")


class Names:
    """Output paths that never overwrite an input nor another output of the same run."""

    def __init__(self, items: Sequence[Item]):
        self.inputs = {item.source.resolve() for item in items}
        self.claimed: set[Path] = set()

    def claim(self, item: Item, output: Path, scale: float, fmt: str) -> Path:
        relative = output_name(item.relative, scale, fmt)
        path = output / relative
        if self._taken(path):
            ext = item.source.suffix.lstrip(".").lower() or "file"
            stem = f"{item.relative.stem}_{ext}_x{scale:g}"
            path = output / relative.with_name(f"{stem}.{FILE_EXTENSIONS[fmt]}")
            number = 2
            while self._taken(path):
                path = output / relative.with_name(f"{stem}-{number}.{FILE_EXTENSIONS[fmt]}")
                number += 1
        self.claimed.add(path.resolve())
        return path

    def _taken(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved in self.inputs or resolved in self.claimed


# -- writing ---------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; an image is not
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(output: Path) -> int:
    """Remove the temporary files a killed run left in the output folder; returns how many."""
    if not output.is_dir():
        return 0
    removed = 0
    for path in output.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


# -- the two ways to run ---------------------------------------------------------------------------


class Local:
    """The engine in this process: ``Enhancer.prepare``, ``run`` and ``finish``, as the handler."""

    def __init__(
        self,
        model: Path,
        restore: Path | None,
        device: str,
        config: Path | None,
        served: bool = False,
    ) -> None:
        """``served``: load ``model`` as a server does, with the pair (``restore.pt``) and every
        other model in its folder, for a request's ``model`` option to name one."""
        import torch

        from enhancer.catalog import find_models
        from enhancer.contract import RESTORE_FILE
        from enhancer.engine import Enhancer, configure_cpu_threads, native_beside

        settings = load_settings(config)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(device).type == "cpu":
            configure_cpu_threads(settings)
        native = native_beside(model)  # enhancer4.pt beside it, as the server finds it
        extras: list[Path] = []
        if served:
            pair = model.with_name(RESTORE_FILE)
            if restore is None and pair.is_file() and pair.with_suffix(".json").is_file():
                restore = pair
            skip = [model, *([restore] if restore else []), *([native] if native else [])]
            extras = find_models(model.parent, skip=skip)
        self.engine = Enhancer.load(
            model,
            device=device,
            settings=settings,
            restore_path=restore,
            extra_models=extras,
            native_path=native,
        )
        self.has_family = bool(self.engine.levels)

    def plan(self, data: bytes, options: dict[str, str]):
        """Decode and check one file; returns (job, output format)."""
        from enhancer.errors import EnhanceError

        try:
            job = self.engine.prepare(data, options)
        except EnhanceError as error:
            raise Failure(error.status, error.message) from None
        return job, job.format

    def enhance(self, job, data: bytes, options: dict[str, str]) -> tuple[bytes, int, int]:
        from enhancer.errors import EnhanceError

        self.engine.run([job])
        try:
            result = self.engine.finish(job)
        except EnhanceError as error:
            raise Failure(error.status, error.message) from None
        return result.data, result.width, result.height


class Remote:
    """A running TorchServe (``--server``), called through ``enhancer.client``."""

    def __init__(self, url: str, key_file: Path, management_url: str, config: Path | None):
        from enhancer.client import TorchServeClient

        base, model = split_server_url(url)
        self.client = TorchServeClient(base, management_url, model, key_file)
        self.settings = load_settings(config)
        self.has_family = True  # the server says whether it serves a pair (400 otherwise)

    def plan(self, data: bytes, options: dict[str, str]):
        """Decode here too, with the server's limits: to name the output and refuse bad files
        before sending them."""
        from enhancer.errors import EnhanceError
        from enhancer.imaging import load_picture, open_image, resolve_format

        requested = options.get("format", "auto").lower()
        requested = FORMAT_ALIASES.get(requested, requested)
        try:
            image, fmt = open_image(data, self.settings.max_input_pixels)
            picture = load_picture(image, data, fmt)
        except EnhanceError as error:
            raise Failure(error.status, error.message) from None
        return None, resolve_format(requested, picture)

    def enhance(self, job, data: bytes, options: dict[str, str]) -> tuple[bytes, int, int]:
        import io

        from PIL import Image

        from enhancer.client import TorchServeError

        try:
            result = self.client.enhance(data, options)
            try:
                body = b"".join(result.chunks)
            finally:
                result.close()
        except TorchServeError as error:
            raise Failure(error.status, error.message) from None
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
        return body, width, height


class TritonRemote(Remote):
    """A running Triton binding (``--server http://host:8000/v2/models/enhancer``), called with
    ``tritonclient`` over HTTP: the protocol of ``enhancer.serving.triton`` (the image and the
    options as JSON in; the image, its size, status and error body out)."""

    def __init__(self, url: str, config: Path | None):
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise ValueError(
                "--server: a Triton URL needs tritonclient: pip install -e '.[triton]'"
            ) from None
        host, self.model, ssl = split_triton_url(url)
        self.module = httpclient
        self.client = httpclient.InferenceServerClient(
            host, ssl=ssl, connection_timeout=10.0, network_timeout=TRITON_TIMEOUT
        )
        self.settings = load_settings(config)
        self.has_family = True  # the server says whether it serves a pair (400 otherwise)
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as error:  # noqa: BLE001 - unreachable, refused, not HTTP: say so
            raise ValueError(f"--server: no Triton answers at {host}: {error}") from None
        if not ready:
            raise ValueError(f"--server: Triton at {host} has no ready model '{self.model}'")

    def enhance(self, job, data: bytes, options: dict[str, str]) -> tuple[bytes, int, int]:
        import json

        import numpy as np
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, value in (("image", data), ("options", json.dumps(options).encode())):
            column = np.empty((1, 1), dtype=np.object_)  # object: bytes keep trailing NULs
            column[0, 0] = value
            tensor = self.module.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(column)
            inputs.append(tensor)
        names = ("image", "width", "height", "status", "error")
        outputs = [self.module.InferRequestedOutput(name) for name in names]
        try:
            result = self.client.infer(self.model, inputs, outputs=outputs)
        except InferenceServerException as error:  # Triton's own refusal: queue full, down, ...
            raise Failure(503, f"Triton: {error.message()}") from None
        cell = {name: result.as_numpy(name)[0, 0] for name in names}
        status = int(cell["status"])
        if status != 200:
            body = json.loads(bytes(cell["error"]) or b"{}")
            raise Failure(status, body.get("message", f"Triton answered {status}"))
        return bytes(cell["image"]), int(cell["width"]), int(cell["height"])


# Seconds a Triton request may take: above TorchServe's responseTimeout (300 s), as the page's.
TRITON_TIMEOUT = 310.0


def split_triton_url(url: str) -> tuple[str, str, bool]:
    """``http://host:8000/v2/models/enhancer`` -> (``host:8000``, ``enhancer``, https?).

    Raises:
        ValueError: not an http(s) URL of that shape.
    """
    parts = urlsplit(url)
    match = re.fullmatch(r"/v2/models/([^/]+)/?", parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or not match:
        raise ValueError(
            f"--server: '{url}' is not a Triton model URL (http://host:port/v2/models/NAME)"
        )
    return parts.netloc, match.group(1), parts.scheme == "https"


def is_triton_url(url: str) -> bool:
    """Whether ``--server`` names a Triton model (``.../v2/models/NAME``) rather than TorchServe."""
    return re.search(r"/v2/models/[^/]+/?$", urlsplit(url).path) is not None


def split_server_url(url: str) -> tuple[str, str]:
    """``http://host:8080/predictions/enhancer`` -> (``http://host:8080``, ``enhancer``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--server: '{url}' is not an http(s) URL")
    match = re.fullmatch(r"(.*)/predictions/([^/]+)/?", parts.path)
    prefix, model = (match.group(1), match.group(2)) if match else (parts.path.rstrip("/"), None)
    return f"{parts.scheme}://{parts.netloc}{prefix}", model or MODEL_NAME


def load_settings(config: Path | None):
    """The ``handler:`` settings of a model-config.yaml (the server's), or the defaults."""
    from enhancer.settings import EnhancerSettings

    if config is None or not config.is_file():
        return EnhancerSettings()
    import yaml

    return EnhancerSettings.from_model_config(yaml.safe_load(config.read_text()) or {})


# -- the command -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="enhance",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the output folder")
    parser.add_argument("-r", "--recursive", action="store_true", help="walk sub-folders too")
    parser.add_argument(
        "--overwrite", action="store_true", help="enhance again when an output exists"
    )
    parser.add_argument("--scale", type=float, default=2.0, help="1 to 8 (default: 2)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=sorted(set(FORMATS) | set(FORMAT_ALIASES)),
        help="output format (default: auto, as the API)",
    )
    parser.add_argument("--quality", type=int, help="1-100, for jpeg, webp and avif")
    parser.add_argument("--strength", type=float, help="0-1, blend with a plain resize")
    parser.add_argument("--denoise", type=float, help="0-1, with a clean/restore model pair")
    parser.add_argument("--tile", type=int, help="tile side in input pixels")
    where = parser.add_argument_group("in-process (default)")
    where.add_argument(
        "--model",
        help=f"TorchScript model with its card beside it (default: {REPO_MODEL}); or the name "
        "of a served model (the `model` option: clean, restore, an exported model's card "
        "name), with --server or beside the default model",
    )
    where.add_argument("--restore", type=Path, help="the restore model of a pair (for --denoise)")
    where.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    where.add_argument(
        "--config",
        type=Path,
        default=MODEL_CONFIG,
        help="model-config.yaml whose handler: settings apply (default: the server's)",
    )
    remote = parser.add_argument_group("through a running TorchServe or Triton")
    remote.add_argument(
        "--server",
        help="TorchServe's predictions URL, e.g. http://127.0.0.1:8080/predictions/enhancer, "
        "or a Triton model's, e.g. http://127.0.0.1:8000/v2/models/enhancer",
    )
    remote.add_argument(
        "--key-file",
        type=Path,
        help=f"TorchServe's key file (default: {KEY_FILE} here, else {REPO_KEY_FILE})",
    )
    remote.add_argument("--management-url", default="", help="to rotate an expired key")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> dict[str, str]:
    values = {
        "scale": args.scale,
        "format": args.format,
        "quality": args.quality,
        "strength": args.strength,
        "denoise": args.denoise,
        "tile": args.tile,
    }
    options = {name: f"{value:g}" if isinstance(value, float) else str(value)
               for name, value in values.items() if value is not None}  # fmt: skip
    if options["format"] == "auto":
        del options["format"]  # the API's default, so the server sees the same request
    return options


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C: the file being written is removed, nothing half-written."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr

    def usage(message: str) -> int:
        print(f"enhance: {message}", file=out)
        return EXIT_USAGE

    if not 1.0 <= args.scale <= 8.0:
        return usage("--scale must be from 1 to 8")
    items, not_images, problems = collect(args.inputs, args.recursive, args.output)
    for problem in problems:
        print(f"enhance: {problem}", file=out)
    if problems and not items:
        return EXIT_USAGE
    options = _options(args)
    try:
        if args.server and is_triton_url(args.server):
            backend: Local | Remote = TritonRemote(args.server, args.config)
        elif args.server:
            key_file = args.key_file or (KEY_FILE if KEY_FILE.is_file() else REPO_KEY_FILE)
            backend = Remote(args.server, key_file, args.management_url, args.config)
        if args.server and args.model:
            options["model"] = args.model  # a served model's name
        elif not args.server:
            model = Path(args.model) if args.model else _default_model()
            # no --model: the default model as the server loads it (with the restore model of its
            # pair beside it, at the same default denoise level), so the outputs are the server's
            served = not args.model
            if args.model and _is_model_name(args.model):
                model, served = _default_model(), True  # a name: served beside the default
                options["model"] = args.model
            if model is None:
                return usage(f"no model: pass --model (looked for {REPO_MODEL})")
            backend = Local(model, args.restore, args.device, args.config, served=served)
    except (OSError, ValueError) as error:
        return usage(str(error))
    if args.denoise is not None and not backend.has_family:
        return usage("--denoise needs a clean/restore pair: pass --restore with the restore model")

    removed = remove_stale_temporaries(args.output)
    if removed:
        print(f"enhance: removed {removed} temporary file(s) of an interrupted run", file=out)
    summary = Summary(not_images=not_images)
    started = time.monotonic()
    try:
        with _terminate_as_interrupt():
            _run(items, backend, options, args, summary)
    except KeyboardInterrupt:
        print("\nenhance: interrupted; no partial files left", file=out)
        _print_summary(summary, time.monotonic() - started, out)
        return EXIT_INTERRUPTED
    _print_summary(summary, time.monotonic() - started, out)
    return EXIT_FAILED if summary.failed or problems else 0


def _is_model_name(value: str) -> bool:
    """Whether ``--model`` names a served model rather than a file: no such file, no folder in
    it and no ``.pt`` suffix."""
    return not Path(value).exists() and "/" not in value and not value.endswith(".pt")


def _default_model() -> Path | None:
    for candidate in (Path("model_store") / f"{MODEL_NAME}.pt", REPO_MODEL):
        if candidate.is_file():
            return candidate
    return None


def _run(
    items: Sequence[Item],
    backend: Local | Remote,
    options: dict[str, str],
    args: argparse.Namespace,
    summary: Summary,
) -> None:
    from tqdm import tqdm

    names = Names(items)
    with tqdm(
        total=len(items), unit="file", disable=args.quiet, file=sys.stderr, dynamic_ncols=True
    ) as bar:
        for item in items:
            bar.set_description(str(item.relative)[-40:])
            try:
                data = item.source.read_bytes()
                job, fmt = backend.plan(data, options)
                target = names.claim(item, args.output, args.scale, fmt)
                if target.exists() and not args.overwrite:
                    summary.skipped += 1
                else:
                    encoded, width, height = backend.enhance(job, data, options)
                    write_atomic(target, encoded)
                    summary.enhanced += 1
                    summary.megapixels += width * height / 1e6
            except (Failure, OSError) as error:
                message = error.message if isinstance(error, Failure) else str(error)
                summary.failed += 1
                summary.failures.append((item.source, message))
                bar.write(f"enhance: {item.source}: {message}", file=sys.stderr)
            bar.set_postfix_str(f"{summary.megapixels:.2f} MP out", refresh=False)
            bar.update(1)


def _print_summary(summary: Summary, seconds: float, out) -> None:
    parts = [f"{summary.enhanced} enhanced ({summary.megapixels:.2f} MP out)"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (output exists; --overwrite to redo)")
    parts.append(f"{summary.failed} failed")
    if summary.not_images:
        parts.append(f"{summary.not_images} not an image (left alone)")
    print(f"enhance: {', '.join(parts)} in {seconds:.1f} s", file=out)
    for path, message in summary.failures:
        print(f"  failed: {path}: {message}", file=out)


if __name__ == "__main__":
    sys.exit(main())
