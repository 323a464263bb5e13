"""Enhance an image through the Triton binding (scripts.triton_serve) with ``tritonclient``.

    .venv/bin/python -m scripts.triton_client photo.jpg -o photo_x2.png
    .venv/bin/python -m scripts.triton_client photo.jpg -o photo_x4.webp --scale 4 --format webp
    .venv/bin/python -m scripts.triton_client photo.jpg --url 127.0.0.1:9000 --check    # PASS/FAIL
    .venv/bin/python -m scripts.triton_client photo.jpg -o x.png --protocol grpc   # port 8001

It sends the file's bytes as the ``image`` input and the options as the ``options`` input (a JSON
object), and reads back ``image``, ``content_type``, ``width``, ``height``, ``status``, ``error``
and ``headers`` (a JSON object: ``X-Enhance-Scale-Used``, the scale ``--scale auto`` chose, as
TorchServe's response header). Without ``--format``, the output file's extension (.png, .jpg,
.webp) picks the format.
The service answers a refused image with ``status`` 400/413/415/500/507 and TorchServe's JSON body
in ``error`` (scripts.triton_serve says why errors are outputs); this client prints that error
and exits 1, as it does when Triton cannot be reached or refuses the request itself.

``--check`` does what Triton's example clients do: it checks the answer (status 200, the declared
size equals the decoded image's, and both equal round(scale x input size) after EXIF orientation,
with the scale the answer says it used)
and prints ``PASS: enhancer ...`` or ``FAIL: enhancer ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enhancer.contract import MODEL_NAME, OPTION_NAMES
from scripts.ops import triton_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.triton_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", type=Path, help="the image file to enhance")
    parser.add_argument("-o", "--output", type=Path, help="where to write the result")
    parser.add_argument(
        "--url",
        default=None,
        help="host:port (default: 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)",
    )
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--model-name", default=MODEL_NAME)
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the answer (default: %(default)s, TorchServe's responseTimeout)",
    )
    parser.add_argument("--check", action="store_true", help="check the answer; print PASS or FAIL")
    for name in OPTION_NAMES:
        parser.add_argument(f"--{name}", help=f"the '{name}' option (see the README's API section)")
    args = parser.parse_args(argv)

    options = {
        name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None
    }
    return triton_client.run(
        args.image,
        args.output,
        options,
        url=args.url,
        protocol=args.protocol,
        model_name=args.model_name,
        timeout=args.timeout,
        check_reply=args.check,
    )


if __name__ == "__main__":
    sys.exit(main())
