"""Start, stop and inspect the web page: gunicorn serving ``frontend:create_app()``.

    .venv/bin/python -m scripts.page start                 # http://127.0.0.1:5000/; waits for it
    .venv/bin/python -m scripts.page start --port 8000     # another port
    .venv/bin/python -m scripts.page status                # is it up, and is TorchServe ready?
    .venv/bin/python -m scripts.page stop

The work is ``scripts.ops.page``'s (the browser tests and the container use it too).
"""

from __future__ import annotations

import argparse
import sys

from scripts.ops import page


def cmd_start(args: argparse.Namespace) -> int:
    page.start(
        args.host,
        args.port,
        workers=args.workers,
        connections=args.connections,
        timeout=args.timeout,
        log=lambda line: print(f"page: {line}"),
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    print("page: stopped." if page.stop() else "page: not running.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ready, line = page.status()
    print(f"page: {line}")
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.page",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", help="start the page under gunicorn and wait until it answers"
    )
    start.add_argument(
        "--host", default=page.DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    start.add_argument(
        "--port",
        type=int,
        default=page.DEFAULT_PORT,
        help="port to listen on (default: %(default)s)",
    )
    start.add_argument(
        "--workers", type=int, default=2, help="gunicorn processes (default: %(default)s)"
    )
    start.add_argument(
        "--connections",
        type=int,
        default=page.DEFAULT_CONNECTIONS,
        help="connections each process serves at once (default: %(default)s)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the page to answer (default: %(default)s)",
    )
    start.set_defaults(run=cmd_start)
    commands.add_parser("stop", help="stop the page").set_defaults(run=cmd_stop)
    commands.add_parser(
        "status", help="show whether the page and TorchServe are ready; exit 1 unless both"
    ).set_defaults(run=cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except page.PageError as error:
        print(f"page: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
