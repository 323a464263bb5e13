"""Process checks through psutil (a TorchServe dependency): alive, what it runs, its children."""

from __future__ import annotations

import psutil


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def runs(pid: int, *markers: bytes | str) -> bool:
    """Whether ``pid`` is alive and its command line holds one of ``markers`` (a pid may have
    been reused by another program since it was recorded)."""
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: trust the record
    texts = [m.decode() if isinstance(m, bytes) else m for m in markers]
    return any(text in command for text in texts)


def children(pid: int) -> list[int]:
    """All descendants of ``pid`` (e.g. TorchServe's worker processes); empty when it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
