"""The archive's manifest: the sha256 of every file the .mar holds, checked at worker start.

``scripts.ops.archive`` writes ``SHA256SUMS`` (``sha256sum`` format: ``<hex>  <path>`` per line)
into the archive after torch-model-archiver has built it, listing every other member: the handler,
every file of the ``enhancer`` package, the cards, the models, ``model-config.yaml`` and
``MAR-INF/MANIFEST.json``. The worker checks the folder TorchServe unpacked the archive into
against it before it imports the engine: a missing, changed or unlisted file refuses the start with
one line that names the file. It is signed by nothing: it tells a damaged or edited archive from a
good one, not a forged one from a genuine one.

Torch-free and stdlib-only, so the handler can run it before anything else of the package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

MANIFEST_FILE = "SHA256SUMS"
# What a running worker writes into its unpacked archive folder (bytecode, the OpenVINO conversion
# cache of backends.py): never part of the archive, so never checked.
WRITTEN_AT_RUN_TIME = ("__pycache__", ".backend-cache")


class ArchiveDamagedError(ValueError):
    """The unpacked archive differs from its manifest; the message names the file."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_text(digests: Mapping[str, str]) -> str:
    """``sha256sum``-format lines for ``{archive path: hex digest}``, sorted by path."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def parse_manifest(text: str) -> dict[str, str]:
    """``{archive path: hex digest}`` from ``SHA256SUMS`` text.

    Raises:
        ArchiveDamagedError: a line that is not ``<64 hex digits>  <path>``.
    """
    digests = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if (
            not sep
            or not name
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise ArchiveDamagedError(
                f"the archive is damaged: line {number} of {MANIFEST_FILE} "
                "is not '<sha256>  <file>'"
            )
        digests[name] = digest
    return digests


def _files(folder: Path) -> Iterable[str]:
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not set(relative.parts) & set(WRITTEN_AT_RUN_TIME):
            yield relative.as_posix()


def verify_folder(folder: str | Path) -> int:
    """Check an unpacked archive against its ``SHA256SUMS``.

    Returns:
        How many files were checked.

    Raises:
        ArchiveDamagedError: no manifest, or a listed file that is missing or differs, or a file
            that is not listed; the one-line message names the file.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise ArchiveDamagedError(
            f"the archive is damaged or was not built by scripts.archive: no {MANIFEST_FILE} in "
            f"{folder} (rebuild it with `python -m scripts.archive --force`)"
        )
    digests = parse_manifest(manifest.read_text(encoding="utf-8", errors="replace"))
    for name, digest in sorted(digests.items()):
        path = folder / name
        if not path.is_file():
            raise ArchiveDamagedError(
                f"the archive is damaged: {name} is listed in {MANIFEST_FILE} but missing"
            )
        actual = _file_sha256(path)
        if actual != digest:
            raise ArchiveDamagedError(
                f"the archive is damaged: {name} has sha256 {actual[:16]}..., "
                f"its {MANIFEST_FILE} says {digest[:16]}..."
            )
    extra = sorted(set(_files(folder)) - set(digests) - {MANIFEST_FILE})
    if extra:
        raise ArchiveDamagedError(
            f"the archive is damaged: {extra[0]} is not listed in {MANIFEST_FILE}"
        )
    return len(digests)


def write_manifest(folder: str | Path) -> Path:
    """Write ``SHA256SUMS`` for every file under ``folder`` (for folders that stand in for an
    unpacked archive, e.g. in tests; archives get theirs from ``scripts.ops.archive``)."""
    folder = Path(folder)
    digests = {name: _file_sha256(folder / name) for name in _files(folder)}
    digests.pop(MANIFEST_FILE, None)
    path = folder / MANIFEST_FILE
    path.write_text(manifest_text(digests), encoding="utf-8")
    return path
