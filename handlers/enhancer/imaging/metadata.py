"""The ``metadata`` option: what of the input's EXIF and XMP the output keeps.

- ``keep``: all of it (EXIF with the orientation reset to 1, XMP, the ICC profile, DPI).
- ``strip-location`` (the default): EXIF without its GPS block (the whole GPS IFD: position,
  altitude, direction, time, area name) and without the tags that identify the camera or its
  owner (PRIVATE_EXIF_TAGS: serial numbers, the owner's name, the image's unique id, and the
  maker note, where makers keep serial numbers and sometimes a position of their own). XMP is
  free-form: it is kept unless it mentions any of PRIVATE_XMP_MARKERS (GPS, location names,
  serial numbers, owner), and then left out whole, since no edit of it could be checked.
- ``strip``: no EXIF and no XMP. The ICC profile stays (without it colours would change) and so
  does the DPI (a print size, not a fact about the photographer); the EXIF orientation has already
  been applied to the pixels, so the picture stays upright.
"""

from __future__ import annotations

import dataclasses
import logging

from PIL import Image

from enhancer.imaging.picture import Metadata, _short

logger = logging.getLogger(__name__)

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
# Tags left out by strip-location, by the IFD that holds them.
PRIVATE_EXIF_TAGS = {
    "IFD0": {
        0xC62F: "CameraSerialNumber",  # DNG
    },
    "Exif": {
        0x927C: "MakerNote",
        0xA420: "ImageUniqueID",
        0xA430: "CameraOwnerName",
        0xA431: "BodySerialNumber",
        0xA435: "LensSerialNumber",
    },
}
# XMP that mentions any of these (case-sensitive, as XMP names are) is left out by strip-location:
# exif:GPS*, Iptc4xmpCore:Location and Iptc4xmpExt:LocationCreated/LocationShown, photoshop:City,
# State and Country, aux:SerialNumber, aux:LensSerialNumber, exifEX:BodySerialNumber,
# exifEX:CameraOwnerName, exifEX:LensSerialNumber, exif:ImageUniqueID.
PRIVATE_XMP_MARKERS = (
    b"GPS",
    b"Location",
    b"photoshop:City",
    b"photoshop:State",
    b"photoshop:Country",
    b"SerialNumber",
    b"OwnerName",
    b"ImageUniqueID",
)


def apply_metadata_option(meta: Metadata, mode: str) -> Metadata:
    """The metadata an output carries under ``metadata=mode`` ("keep", "strip-location", "strip").

    Raises:
        ValueError: an unknown mode (options.parse_options refuses those first).
    """
    if mode == "keep":
        return meta
    if mode == "strip":
        return dataclasses.replace(meta, exif=None, xmp=None)
    if mode == "strip-location":
        return dataclasses.replace(meta, exif=_exif_without_location(meta.exif), xmp=_xmp(meta.xmp))
    raise ValueError(f"unknown metadata mode {mode!r}")


def _exif_without_location(block: bytes | None) -> bytes | None:
    if not block:
        return block
    try:
        exif = Image.Exif()
        exif.load(block)
        exif.pop(GPS_IFD, None)
        for tag in PRIVATE_EXIF_TAGS["IFD0"]:
            exif.pop(tag, None)
        if EXIF_IFD in exif:
            sub = exif.get_ifd(EXIF_IFD)
            for tag in PRIVATE_EXIF_TAGS["Exif"]:
                sub.pop(tag, None)
        return exif.tobytes() if exif else None
    except Exception as error:  # noqa: BLE001 - what cannot be cleaned is not sent
        logger.info("dropping EXIF that could not be cleaned of its location: %s", _short(error))
        return None


def _xmp(xmp: bytes | None) -> bytes | None:
    if not xmp:
        return xmp
    found = [marker.decode() for marker in PRIVATE_XMP_MARKERS if marker in xmp]
    if found:
        logger.info("leaving out XMP that names %s", ", ".join(found))
        return None
    return xmp
