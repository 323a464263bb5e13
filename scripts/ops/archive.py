"""Build the TorchServe archive (.mar) of a model: handler, the ``enhancer`` package, card, config.

What goes in: ``handlers/enhancer_handler.py`` as the handler, the package folder
``handlers/enhancer/`` whole (``--extra-files``; TorchServe imports the handler by its bare name and
the handler imports ``enhancer`` from beside it), the model's card (``<model>.json``, which the
handler reads beside the .pt) and ``handlers/model-config.yaml``; the restore model of a pair
(``restore.pt``), the face model (``face.pt``), and every other model with its card in the model's
folder or one level down (``enhancer.catalog.find_models``), as ``models/<card name>.pt`` and
``.json``: the worker serves each by name (the ``model`` option). The card's sha256 must match the
.pt, or nothing is built: the handler would refuse it at start-up. The archive is rebuilt only when
an input is newer than it or differs from its copy inside (or with ``force``).

Verification, two layers: inside, ``SHA256SUMS`` lists the sha256 of every other member (written
into the zip after torch-model-archiver, so ``MAR-INF/MANIFEST.json`` is covered too), which the
worker checks at start (``enhancer.integrity``); beside it, ``<name>.mar.sha256`` records the whole
file's sha256, which ``verify_archive`` checks before TorchServe is started on it, so one flipped
byte anywhere in the file (even where no unzip would look) is reported as a damaged archive.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from enhancer import catalog
from enhancer.card import ModelCard, file_sha256
from enhancer.contract import FACE_FILE, MODEL_NAME, MODELS_DIR, NATIVE_FILE, RESTORE_FILE
from enhancer.family import check_family
from enhancer.integrity import MANIFEST_FILE, ArchiveDamagedError, manifest_text, parse_manifest
from scripts.ops.paths import DEFAULT_MODEL, HANDLER, HANDLERS, MODEL_CONFIG, MODEL_STORE, PACKAGE

__all__ = [
    "ArchiveDamaged",
    "ArchiveError",
    "archive_inputs",
    "build_archive",
    "describe",
    "extra_models",
    "file_sha256",
    "is_stale",
    "load_verified_card",
    "member_name",
    "package_files",
    "sidecar",
    "verify_archive",
]


class ArchiveError(Exception):
    """The archive cannot be built (missing input, a card that does not match its model, ...)."""


class ArchiveDamaged(ArchiveError):  # noqa: N818 - reads as what it is, like ArchiveError
    """A built archive is not what was built: its sha256, a member's CRC or its manifest differ."""


def sidecar(mar: Path) -> Path:
    """``<name>.mar.sha256`` beside the archive: its sha256 when it was built (sha256sum format)."""
    return Path(mar).with_name(f"{Path(mar).name}.sha256")


def package_files() -> list[Path]:
    """The files of the ``enhancer`` package shipped beside the handler (no caches)."""
    return sorted(
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def member_name(path: Path) -> str:
    """Where an input file lies in the archive: the package under ``enhancer/``, the rest at the
    top."""
    path = Path(path)
    if path.is_relative_to(PACKAGE):
        return path.relative_to(HANDLERS).as_posix()
    return path.name


def archive_inputs(model: Path, config_file: Path = MODEL_CONFIG) -> list[Path]:
    """Every file the archive of ``model`` is built from."""
    return [model, model.with_suffix(".json"), config_file, HANDLER, *package_files()]


def stage_package(folder: Path) -> Path:
    """Copy the ``enhancer`` package (without caches) into ``folder``/enhancer and return
    ``folder``: torch-model-archiver copies the *contents* of a folder given in --extra-files, so
    the package folder itself must be one level down."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        PACKAGE, Path(folder) / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return Path(folder)


def face_beside(model: Path) -> list[Path]:
    """The face model (``face.pt`` + ``face.json``) in ``model``'s folder, shipped in the archive
    beside it (enables ``faces=auto``; enhancer/faces.py), or [] when it is not there."""
    face = Path(model).with_name(FACE_FILE)
    card = face.with_suffix(".json")
    return [face, card] if face.is_file() and card.is_file() and face != Path(model) else []


def extra_models(model: Path, restore: Path | None = None) -> dict[str, Path]:
    """The other models the archive of ``model`` ships, by card name (``models/<name>.pt``):
    every ``.pt`` with its card in ``model``'s folder or one level down, but the model itself,
    the restore model of its pair and the face model (enhancer.catalog.find_models).

    Raises:
        ArchiveError: a card that cannot be read, a name that cannot name a model, or two models
            with one name.
    """
    model = Path(model)
    skip = [model, *([restore] if restore is not None else [])]
    found = catalog.find_models(model.parent, skip=skip)
    try:
        card = ModelCard.load(model.with_suffix(".json"))
        entries = catalog.build(model, card, restore, None if restore is None else card, found)
    except ValueError as error:
        raise ArchiveError(str(error)) from None
    return {entry.name: entry.path for entry in entries.values() if entry.role == "extra"}


def native_beside(model: Path) -> list[Path]:
    """The native 4x model (``enhancer4.pt`` + ``enhancer4.json``) in ``model``'s folder, shipped
    in the archive beside it (the last pass of scales of 4 and more; enhancer/passes.py), or []
    when it is not there."""
    native = Path(model).with_name(NATIVE_FILE)
    card = native.with_suffix(".json")
    return [native, card] if native.is_file() and card.is_file() and native != Path(model) else []


def is_stale(
    mar: Path,
    model: Path,
    *,
    name: str = MODEL_NAME,
    version: str | None = None,
    config_file: Path = MODEL_CONFIG,
    restore: Path | None = None,
    extras: dict[str, Path] | None = None,
) -> bool:
    """Whether ``mar`` must be (re)built for ``model`` (with ``extras``, the other models by name;
    default: ``extra_models``, as ``build_archive``).

    It must when it is missing, older than any input, or holds other files than the inputs: every
    member but the model itself is compared byte for byte (the model is covered by its card's
    sha256, checked against the .pt at build time), and so are the manifest's name and version.
    """
    model, config_file = Path(model), Path(config_file)
    inputs = archive_inputs(model, config_file)
    if restore is not None:
        inputs = [*inputs, Path(restore), Path(restore).with_suffix(".json")]
    inputs = [*inputs, *face_beside(model), *native_beside(model)]
    if extras is None:
        try:
            extras = extra_models(model, restore)
        except ArchiveError:
            return True  # building will say what is wrong
    for path in extras.values():
        inputs += [Path(path), Path(path).with_suffix(".json")]
    if not mar.exists() or any(path.stat().st_mtime > mar.stat().st_mtime for path in inputs):
        return True
    if not sidecar(mar).exists():
        return True  # built before archives were verified, or by hand
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            if (
                manifest["model"]["modelName"] != name
                or manifest["model"]["serializedFile"] != model.name
            ):
                return True
            if version is not None and manifest["model"]["modelVersion"] != version:
                return True
            if any(
                archive.read(member_name(path)) != path.read_bytes()
                for path in archive_inputs(model, config_file)
                if path != model
            ):
                return True
            # the restore model ships as restore.pt + restore.json; its card covers the .pt
            members = set(archive.namelist())
            if MANIFEST_FILE not in members:
                return True
            face = face_beside(model)
            if (FACE_FILE in members) != bool(face) or (
                face and archive.read(face[1].name) != face[1].read_bytes()
            ):
                return True
            native = native_beside(model)
            if (NATIVE_FILE in members) != bool(native) or (
                native and archive.read(native[1].name) != native[1].read_bytes()
            ):
                return True
            if restore is None:
                if RESTORE_FILE in members:
                    return True
            elif archive.read("restore.json") != Path(restore).with_suffix(".json").read_bytes():
                return True
            # the other models: the same names, the same cards (each card covers its .pt)
            shipped_models = {n for n in members if n.startswith(f"{MODELS_DIR}/")}
            wanted = {f"{MODELS_DIR}/{name}{ext}" for name in extras for ext in (".pt", ".json")}
            if shipped_models != wanted or any(
                archive.read(f"{MODELS_DIR}/{name}.json")
                != Path(path).with_suffix(".json").read_bytes()
                for name, path in extras.items()
            ):
                return True
            # a module removed from the package must leave the archive too
            shipped = {n for n in archive.namelist() if n.startswith(f"{PACKAGE.name}/")}
            return shipped != {member_name(p) for p in package_files()}
    except (KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return True


def load_verified_card(model: Path) -> ModelCard:
    """Read the card beside ``model`` and check its sha256 against the model file.

    Raises:
        ArchiveError: the model or card is missing or invalid, or the digests differ.
    """
    card_path = model.with_suffix(".json")
    for path in (model, card_path):
        if not path.is_file():
            raise ArchiveError(
                f"{path} not found: a model is a TorchScript .pt with its card .json beside it"
            )
    try:
        card = ModelCard.load(card_path)
        card.verify(model)
    except ValueError as error:
        raise ArchiveError(f"{card_path}: {error}") from None
    return card


def build_archive(
    model: Path = DEFAULT_MODEL,
    *,
    name: str = MODEL_NAME,
    version: str | None = None,
    export_path: Path = MODEL_STORE,
    config_file: Path = MODEL_CONFIG,
    store: bool = False,
    force: bool = False,
    restore: Path | None = None,
    extras: dict[str, Path] | None = None,
) -> Path:
    """Build ``<export_path>/<name>.mar`` unless it is newer than all of its inputs.

    Args:
        model: the TorchScript file; its card is the same path with a .json suffix.
        name: the model name TorchServe serves it under (``/predictions/<name>``).
        version: the archive's version; default: the card's ``version``.
        export_path: the folder the .mar is written to (created if missing).
        config_file: the per-model TorchServe config (batch size, timeouts, ``handler:`` limits).
        store: store files uncompressed (a TorchScript file hardly compresses; faster to build).
        force: rebuild even when the archive is up to date.
        restore: a ``restore`` model of the same family (card beside it): shipped as restore.pt,
            it makes the served model a clean/restore pair with the ``denoise`` option.
        extras: the other models to ship, by card name (``models/<name>.pt`` and ``.json``),
            served by name with the ``model`` option; default (None): ``extra_models``, every
            other card in the model's folder; ``{}``: none.

    Returns:
        The path of the .mar.

    Raises:
        ArchiveError: a missing input, a card that does not match its model, or an archiver failure.
    """
    model = Path(model).resolve()
    config_file = Path(config_file).resolve()
    export_path = Path(export_path).resolve()
    card = load_verified_card(model)
    for native in native_beside(model)[:1]:  # its card must match it too
        load_verified_card(native)
    if restore is not None:
        restore = Path(restore).resolve()
        try:
            check_family(card, load_verified_card(restore))
        except ValueError as error:
            raise ArchiveError(str(error)) from None
    if not config_file.is_file():
        raise ArchiveError(f"{config_file} not found")
    if extras is None:
        extras = extra_models(model, restore)
    extras = {key: Path(path).resolve() for key, path in extras.items()}
    for path in extras.values():
        load_verified_card(path)  # the worker would refuse a model that differs from its card
    mar = export_path / f"{name}.mar"
    if not force and not is_stale(
        mar,
        model,
        name=name,
        version=version,
        config_file=config_file,
        restore=restore,
        extras=extras,
    ):
        return mar
    export_path.mkdir(parents=True, exist_ok=True)
    archiver = shutil.which(
        "torch-model-archiver", path=str(Path(sys.executable).parent)
    ) or shutil.which("torch-model-archiver")
    if archiver is None:
        raise ArchiveError(
            "torch-model-archiver not found: run `make setup` (scripts/setup.sh serve)"
        )
    command = [
        archiver,
        "--model-name",
        name,
        "--version",
        version or card.version,
        "--serialized-file",
        str(model),
        "--handler",
        str(HANDLER),
        "--extra-files",
        "{extra}",
        "--config-file",
        str(config_file),
        "--export-path",
        str(export_path),
        "--archive-format",
        "zip-store" if store else "default",
        "--force",
    ]
    with tempfile.TemporaryDirectory(prefix="enhancer-archive-") as scratch:
        # the package (and models/) staged in a folder of their own: the archiver copies its
        # contents, so nothing else of the scratch folder may lie in it
        staged = stage_package(Path(scratch) / "staged")
        if extras:
            shelf = staged / MODELS_DIR
            shelf.mkdir()
            for key, path in extras.items():
                shutil.copy(path, shelf / f"{key}.pt")
                shutil.copy(path.with_suffix(".json"), shelf / f"{key}.json")
        extra = f"{staged},{model.with_suffix('.json')}"
        if restore is not None:
            pair = Path(scratch) / "restore"
            pair.mkdir()
            shutil.copy(restore, pair / RESTORE_FILE)
            shutil.copy(restore.with_suffix(".json"), pair / "restore.json")
            extra += f",{pair / RESTORE_FILE},{pair / 'restore.json'}"
        for path in face_beside(model):  # face.pt + face.json: the face path (faces.py)
            extra += f",{path}"
        for path in native_beside(model):  # enhancer4.pt + .json: the native 4x path (passes.py)
            extra += f",{path}"
        command = [extra if part == "{extra}" else part for part in command]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ArchiveError(
            f"torch-model-archiver failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    seal(mar, store=store)
    return mar


def seal(mar: Path, *, store: bool = False) -> str:
    """Add ``SHA256SUMS`` (every member's sha256) to a freshly built archive, then record the whole
    file's sha256 beside it (``sidecar``).

    Returns:
        The archive's sha256.
    """
    with zipfile.ZipFile(mar, "a") as archive:
        digests = {
            info.filename: hashlib.sha256(archive.read(info)).hexdigest()
            for info in archive.infolist()
            if not info.is_dir()
        }
        compression = zipfile.ZIP_STORED if store else zipfile.ZIP_DEFLATED
        archive.writestr(MANIFEST_FILE, manifest_text(digests), compress_type=compression)
    digest = file_sha256(mar)
    sidecar(mar).write_text(f"{digest}  {Path(mar).name}\n")
    return digest


def verify_archive(mar: Path) -> int:
    """Check a built archive before serving it: the whole file against its sidecar (when there is
    one), every member's CRC, and every member against ``SHA256SUMS``.

    Returns:
        How many members the manifest covers.

    Raises:
        ArchiveDamaged: the one-line reason, naming the file or member.
    """
    mar = Path(mar)
    rebuild = "rebuild it with `python -m scripts.archive --force` (make archive)"
    recorded = sidecar(mar)
    if recorded.exists():
        want = recorded.read_text().split()[0] if recorded.read_text().split() else ""
        got = file_sha256(mar)
        if got != want:
            raise ArchiveDamaged(
                f"the archive {mar} is damaged: its sha256 is {got[:16]}..., but "
                f"{want[:16]}... was recorded when it was built ({recorded.name}); {rebuild}"
            )
    try:
        with zipfile.ZipFile(mar) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ArchiveDamaged(
                    f"the archive {mar} is damaged: member {bad} fails its CRC check; {rebuild}"
                )
            names = {info.filename for info in archive.infolist() if not info.is_dir()}
            if MANIFEST_FILE not in names:
                raise ArchiveDamaged(f"the archive {mar} has no {MANIFEST_FILE}; {rebuild}")
            digests = parse_manifest(archive.read(MANIFEST_FILE).decode("utf-8", "replace"))
            for name in sorted(names - {MANIFEST_FILE} | set(digests)):
                if name not in digests:
                    problem = f"member {name} is not listed in {MANIFEST_FILE}"
                elif name not in names:
                    problem = f"{name}, listed in {MANIFEST_FILE}, is missing"
                elif hashlib.sha256(archive.read(name)).hexdigest() != digests[name]:
                    problem = f"member {name} differs from its sha256 in {MANIFEST_FILE}"
                else:
                    continue
                raise ArchiveDamaged(f"the archive {mar} is damaged: {problem}; {rebuild}")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ArchiveDamagedError,
        OSError,
        zlib.error,
    ) as error:
        raise ArchiveDamaged(f"the archive {mar} is damaged: {error}; {rebuild}") from None
    return len(digests)


def describe(mar: Path) -> str:
    """A listing of the archive: each member with its size, then the archive's sha256."""
    lines = [f"{mar}:"]
    with zipfile.ZipFile(mar) as archive:
        for info in archive.infolist():
            lines.append(f"  {info.file_size:>12,}  {info.filename}")
    lines.append(f"sha256 {file_sha256(mar)}  {mar.name}")
    return "\n".join(lines)
