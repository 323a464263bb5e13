"""What the reliability suite shares: the session's TorchServe (``torchserve`` from
tests/helpers/servers.py: the tiny scale-2 model, started once) and one page under gunicorn in
front of it (``page``).

The page takes images of up to 1 MB (F1 checks that limit; R7 the one of TorchServe), has no rate
limit (the fuzz and the load rows send hundreds of uploads from one address; F6 starts a page of
its own to see 429s), and drops a body that has not arrived 2 s past its pace (R10).
"""

from __future__ import annotations

import pytest

from tests.helpers.pages import start_page, stop_page

UPLOAD_LIMIT = 1_000_000


@pytest.fixture(scope="package")
def page(torchserve, tmp_path_factory):
    """The page under gunicorn in front of the session's TorchServe, for the whole suite."""
    site = start_page(
        torchserve,
        tmp_path_factory.mktemp("reliability-page"),
        MAX_UPLOAD_BYTES=UPLOAD_LIMIT,
        RATE_LIMIT_PER_MINUTE=0,
        BODY_GRACE=2,
    )
    yield site
    stop_page(site)
