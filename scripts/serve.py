"""Start, stop and inspect TorchServe serving the enhancer, from a run folder (.run/).

    .venv/bin/python -m scripts.serve start            # archive if stale, start, wait until READY
    .venv/bin/python -m scripts.serve start --model runs/x/enhancer.pt    # serve another model
    .venv/bin/python -m scripts.serve status           # is it up, and is the worker READY?
    .venv/bin/python -m scripts.serve key              # the current inference key (for curl)
    .venv/bin/python -m scripts.serve smoke            # enhance a generated photo, check the sizes
    .venv/bin/python -m scripts.serve stop

TorchServe runs with the repository's ``config.properties`` and ``model_store/``, from ``.run/``
(key file, logs, pid file and worker sockets), so it never collides with another TorchServe on the
machine. ``start`` checks Java first (without it a request would hang), then the model, rebuilds
the .mar when an input changed, and waits until the worker is READY; a damaged archive (its recorded
sha256, a member's CRC or its SHA256SUMS differ) is refused before TorchServe starts, and when the
worker cannot load the model (an edited archive, a bad card) it stops at once and shows the log's
error. ``status`` and
``smoke`` rotate an expired key, as the page does. The work is done by ``scripts.ops.torchserve``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.ops import torchserve
from scripts.ops.paths import CONFIG, DEFAULT_MODEL, RUN_DIR


def instance(args: argparse.Namespace) -> torchserve.Instance:
    """The TorchServe of ``--run-dir`` and ``--config`` (default: the one ``make run`` starts)."""
    if args.run_dir is None and args.config is None:
        return torchserve.run_instance()
    return torchserve.Instance.from_config(args.run_dir or RUN_DIR, args.config or CONFIG)


def cmd_start(args: argparse.Namespace) -> int:
    server = instance(args)
    if server.pid() is not None:
        state = "READY" if server.ready() else "not READY (see `python -m scripts.serve status`)"
        print(f"serve: TorchServe is already running from {server.workdir}, {state}.")
        print("serve: to serve a new model or config: make stop, then make run")
        print(torchserve.usage_text(server))
        return 0
    torchserve.start(
        server,
        args.model,
        config=args.config or CONFIG,
        timeout=args.timeout,
        log=lambda line: print(f"serve: {line}"),
    )
    print(torchserve.usage_text(server))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    server = instance(args)
    print(
        "serve: TorchServe stopped."
        if torchserve.stop(server)
        else f"serve: TorchServe is not running from {server.workdir}."
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ready, lines = torchserve.status_lines(instance(args))
    print(f"serve: {lines[0]}")
    for line in lines[1:]:
        print(line)
    return 0 if ready else 1


def cmd_key(args: argparse.Namespace) -> int:
    print(instance(args).key(args.kind))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    return torchserve.smoke(instance(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"TorchServe's run folder: key file, logs, pid file (default: {RUN_DIR})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PROPERTIES",
        help=f"its config.properties, for its addresses (default: {CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", help="archive if stale, start TorchServe, wait until READY"
    )
    start.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card beside it (default: %(default)s)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for a READY worker (default: %(default)s)",
    )
    start.set_defaults(run=cmd_start)
    commands.add_parser("stop", help="stop TorchServe").set_defaults(run=cmd_stop)
    commands.add_parser(
        "status", help="show TorchServe and its worker; exit 1 unless READY"
    ).set_defaults(run=cmd_status)
    key = commands.add_parser("key", help="print the current key (default: inference)")
    key.add_argument("--kind", choices=("inference", "management", "API"), default="inference")
    key.set_defaults(run=cmd_key)
    commands.add_parser(
        "smoke", help="enhance a generated photo through the running server"
    ).set_defaults(run=cmd_smoke)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except torchserve.ServeError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
