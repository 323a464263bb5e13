"""The request contract, once: what every door (TorchServe, Triton, the page) and client agrees on.

Torch-free and dependency-free, so the page, the clients and the scripts import it without the
engine: the model name, the option names and output formats, the option header prefix for a raw
body, the accepted input formats and how they are recognised from their first bytes, and the shape
of an error body.
"""

from __future__ import annotations

# The name TorchServe and Triton serve the model under: POST /predictions/enhancer.
MODEL_NAME = "enhancer"

# Options of a request: multipart form fields, or, for a raw body, headers with this prefix
# (``X-Enhance-Scale: 4``; any case). The prefix is fixed: it is part of the API.
OPTION_NAMES = (
    "scale",
    "format",
    "quality",
    "tile",
    "strength",
    "denoise",
    "level",
    "enhance_first",
    "compare",
    "metadata",
    "faces",
    "model",
)
OPTION_HEADER_PREFIX = "X-Enhance-"
# ``scale=auto``: the engine picks a whole factor that brings the short side to AUTO_SHORT_SIDE
# (options.auto_scale), and says which in this response header (Triton: the ``headers`` output).
SCALE_AUTO = "auto"
SCALE_USED_HEADER = "X-Enhance-Scale-Used"
AUTO_SHORT_SIDE = 1080
# ``level``: how many restoring passes the image gets at its final size (1: none beyond the
# enlarging passes); LEVELS are the values accepted.
LEVELS = (1, 2, 3, 4)
# Yes/no options (``enhance_first``, ``compare``): the accepted spellings of each answer.
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# ``metadata``: what of the input's EXIF and XMP the output keeps (imaging/metadata.py).
METADATA_MODES = ("keep", "strip-location", "strip")
METADATA_DEFAULT = "strip-location"
# A served clean/restore family: the restore model's file inside the archive (restore.json beside).
RESTORE_FILE = "restore.pt"
# The ``denoise`` levels a family serves (blends computed at load; a request's value snaps to the
# nearest), and the level of a request that sets none (settings.py ``denoise`` overrides it per
# deployment). 0 is the clean model, 1 the restore model.
DENOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
DENOISE_DEFAULT = 0.5
# ``faces``: "auto" restores each detected face with the face model (enhancer/faces.py), "off"
# does not. The response header says how many faces were found, or "unavailable" where the
# deployment has no face model or no detector weights (auto then means off).
FACES_MODES = ("auto", "off")
# The default is "off" by measurement (README, "Faces"): the face path beats the general model in
# face-region PSNR on the held-out faces but is visibly softer on real low-quality faces.
FACES_DEFAULT = "off"
FACES_HEADER = "X-Enhance-Faces"
FACES_UNAVAILABLE = "unavailable"
# The face model's file inside the archive (face.json beside it).
FACE_FILE = "face.pt"
# ``model``: which served model a request runs (enhancer/catalog.py). A clean/restore pair is
# served as these two names (its ends: denoise 0 and 1); a request without ``model`` gets the pair
# blended at its ``denoise`` level, or the one default model. Other models in the model folder are
# served under their cards' names; the archive ships them in this folder. The response says which
# model ran in MODEL_HEADER when the request named one.
MODEL_ROLES = ("clean", "restore")
MODELS_DIR = "models"
MODEL_HEADER = "X-Enhance-Model"

# The native 4x model of the served 2x model (enhancer4.json beside it): found beside the model
# (model_store/, the archive), it makes the last pass of scales of 4 and more (passes.py).
NATIVE_FILE = "enhancer4.pt"

# Values of the ``format`` option; "auto" keeps the input's format where it can be written (PNG
# for alpha and 16 bits, JPEG for HEIC: imaging/encode.py resolve_format).
FORMATS = ("auto", "png", "jpeg", "webp", "avif", "tiff")
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "avif": "image/avif",
    "tiff": "image/tiff",
}
# The file name extension of each output format (what the page names a download).
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "avif": "avif", "tiff": "tif"}
# Output formats that take the ``quality`` option.
LOSSY_FORMATS = ("jpeg", "webp", "avif")

# Input formats, by their Pillow names (HEIF: the pillow-heif plugin's): only these are ever parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
ALLOWED_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF, HEIC or AVIF"
# Their media types and file name extensions (what the page's file picker offers).
INPUT_MEDIA_TYPES = {
    "PNG": ("image/png", (".png",)),
    "JPEG": ("image/jpeg", (".jpg", ".jpeg")),
    "WEBP": ("image/webp", (".webp",)),
    "GIF": ("image/gif", (".gif",)),
    "BMP": ("image/bmp", (".bmp",)),
    "TIFF": ("image/tiff", (".tif", ".tiff")),
    "HEIF": ("image/heic", (".heic", ".heif")),
    "AVIF": ("image/avif", (".avif",)),
}

# ISO media (HEIF family) brands in the ``ftyp`` box: AVIF's own, and those of HEIC/HEIF stills.
_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1")
_HEIF_BRANDS += (b"msf1",)

# Recognised but refused: named in the 415 so the user knows what they sent.
_OTHER_SIGNATURES = (
    (b"8BPS", "PSD"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
)
_TEXT_MARKERS = (b"<svg", b"<?xml", b"<!doctype", b"<html", b"<head", b"<body", b"{", b"[")
# BITMAPINFOHEADER and its successors: the header sizes a real BMP declares at byte 14 ("BM" alone
# is too weak: any text may start with it).
_BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


def sniff_format(data: bytes) -> str | None:
    """The format named by the leading bytes.

    Returns:
        One of ALLOWED_FORMATS, the name of another format (refused with 415), or None when the
        bytes are no known format at all.
    """
    head = bytes(data[:32])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if (
        head[:2] == b"BM"
        and len(data) >= 26
        and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "BMP"
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return _iso_media_format(bytes(data[:64]))
    text = head.lstrip().lower()
    if any(text.startswith(marker) for marker in _TEXT_MARKERS):
        return "text (HTML, SVG, XML or JSON)"
    return None


def _iso_media_format(head: bytes) -> str:
    """AVIF, HEIF or another ISO media file, from the ``ftyp`` box's major and compatible brands.

    A still from an iPhone says ``heic``; AVIF files say ``avif``, or ``mif1`` with ``avif`` among
    their compatible brands (which is why the major brand alone is not enough).
    """
    size = int.from_bytes(head[:4], "big")
    box = head[8 : min(max(size, 16), len(head))]
    brands = [box[i : i + 4] for i in range(0, len(box) - 3, 4) if i != 4]  # skip minor_version
    if brands and brands[0] in _AVIF_BRANDS:
        return "AVIF"
    if brands and brands[0] in _HEIF_BRANDS:
        if brands[0] in (b"mif1", b"msf1") and any(b in _AVIF_BRANDS for b in brands[1:]):
            return "AVIF"
        return "HEIF"
    return "ISO media"


def is_allowed_image(data: bytes) -> bool:
    """Whether the leading bytes are one of the accepted input formats."""
    return sniff_format(data) in ALLOWED_FORMATS


def option_header(name: str) -> str:
    """The request header that carries option ``name`` for a raw body: "X-Enhance-Scale",
    "X-Enhance-Enhance-First" (a hyphen for the underscore: proxies drop headers with one)."""
    return OPTION_HEADER_PREFIX + "-".join(part.capitalize() for part in name.split("_"))


def header_option(suffix: str) -> str:
    """The option named by an option header's suffix (after the prefix): "Enhance-First" ->
    "enhance_first"; the inverse of ``option_header``, in any case."""
    return suffix.lower().replace("-", "_")


def error_body(status: int, kind: str, message: str, **extra: object) -> dict[str, object]:
    """An error's JSON body, shaped like TorchServe's own: ``{"code", "type", "message"}``, plus
    ``extra`` fields (``max_scale`` of a 413 for too much work: the largest scale that fits)."""
    return {"code": status, "type": kind, "message": message, **extra}
