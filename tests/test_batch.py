"""The batch command ``enhance`` (enhancer.batch; issue 12, part 2).

The end-to-end tests run the installed console script as a subprocess on a folder tree made in
code (good, bad and HEIC files) with the tiny model; the others call its pieces directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from enhancer import batch
from enhancer.engine import Enhancer
from tests.helpers.images import (
    MAKE,
    animated,
    exif_block,
    open_bytes,
    photo_array,
    srgb_profile,
    to_bytes,
)

ENHANCE = Path(sys.executable).with_name("enhance")  # the console script pyproject installs
TIMEOUT = 300


def photo(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(photo_array(width, height, seed))


def run_enhance(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ENHANCE), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def image_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def tree(tmp_path) -> Path:
    """photos/: a JPEG (orientation 6, ICC, EXIF), a HEIC and an RGBA PNG in sub-folders, bad
    files (truncated JPEG, HTML named .png, animated GIF) and a text file."""
    photos = tmp_path / "photos"
    (photos / "trip" / "day1").mkdir(parents=True)
    jpeg = to_bytes(
        photo(48, 32), "JPEG", quality=95, exif=exif_block(6).tobytes(), icc_profile=srgb_profile()
    )
    (photos / "portrait.jpg").write_bytes(jpeg)
    (photos / "trip" / "IMG_0001.HEIC").write_bytes(to_bytes(photo(40, 30, 1), "HEIF"))
    (photos / "trip" / "day1" / "logo.png").write_bytes(to_bytes(photo(20, 16, 2).convert("RGBA")))
    (photos / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (photos / "trip" / "page.png").write_bytes(b"<!doctype html><html>not a photo</html>")
    (photos / "trip" / "anim.gif").write_bytes(animated("GIF", 3))
    (photos / "notes.txt").write_text("not an image")
    return photos


GOOD_OUTPUTS = ["portrait_x2.jpg", "trip/IMG_0001_x2.jpg", "trip/day1/logo_x2.png"]


def test_a_folder_tree_end_to_end(tree, sr_model, tmp_path):
    out = tmp_path / "out"
    done = run_enhance(tree, "-o", out, "--recursive", "--model", sr_model, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # bad files make the exit status non-zero
    assert image_files(out) == GOOD_OUTPUTS  # structure kept, nothing else written
    portrait = open_bytes((out / "portrait_x2.jpg").read_bytes())
    assert portrait.size == (64, 96)  # upright (orientation 6), then 2x
    assert portrait.getexif().get(MAKE) == "TestCam" and portrait.info["icc_profile"]
    heic = open_bytes((out / "trip" / "IMG_0001_x2.jpg").read_bytes())
    assert heic.format == "JPEG" and heic.size == (80, 60)
    assert open_bytes((out / "trip/day1/logo_x2.png").read_bytes()).mode == "RGBA"
    summary = done.stderr.strip().splitlines()
    assert any("3 enhanced" in line and "3 failed" in line for line in summary), done.stderr
    for bad in ("broken.jpg", "page.png", "anim.gif"):
        assert any(line.startswith("  failed:") and bad in line for line in summary), bad
    assert "1 not an image" in done.stderr

    # the same bytes as the server's engine for the same options (handler settings)
    engine = Enhancer.load(sr_model, settings=batch.load_settings(batch.MODEL_CONFIG))
    expected = engine.enhance((tree / "portrait.jpg").read_bytes(), {"scale": "2"}).data
    assert (out / "portrait_x2.jpg").read_bytes() == expected

    # a second run skips what exists; --overwrite redoes it
    stamps = {name: (out / name).stat().st_mtime_ns for name in GOOD_OUTPUTS}
    again = run_enhance(tree, "-o", out, "-r", "--model", sr_model, "-q", cwd=tmp_path)
    assert again.returncode == 1 and "3 skipped" in again.stderr and "0 enhanced" in again.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in GOOD_OUTPUTS} == stamps
    one = tree / "portrait.jpg"
    redo = run_enhance(one, "-o", out, "--model", sr_model, "--overwrite", "-q", cwd=tmp_path)
    assert redo.returncode == 0 and "1 enhanced" in redo.stderr, redo.stderr
    assert (out / "portrait_x2.jpg").stat().st_mtime_ns != stamps["portrait_x2.jpg"]


def test_never_overwrites_an_input(tmp_path, sr_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(to_bytes(photo(20, 14)))
    precious = to_bytes(photo(30, 20, 5))
    (folder / "cat_x2.png").write_bytes(precious)  # an input with an output's name
    done = run_enhance(folder, "-o", folder, "--model", sr_model, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (folder / "cat_x2.png").read_bytes() == precious
    assert open_bytes((folder / "cat_png_x2.png").read_bytes()).size == (40, 28)
    assert open_bytes((folder / "cat_x2_x2.png").read_bytes()).size == (60, 40)


def _start(args: list[object], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(ENHANCE), *map(str, args)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def _wait_for_first_output(out: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if any(p.suffix == ".png" for p in out.rglob("*")):
            return
        time.sleep(0.05)
    pytest.fail("the run ended or stalled before its first output")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_an_interrupted_run_leaves_no_partial_image(tmp_path, sr_model, how):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i:02d}.png").write_bytes(to_bytes(photo(160, 120, i)))
    out = tmp_path / "out"
    process = _start([folder, "-o", out, "--scale", "4", "--model", sr_model], tmp_path)
    try:
        _wait_for_first_output(out, process)
        process.send_signal(how)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if how == signal.SIGTERM:
        assert process.returncode == batch.EXIT_INTERRUPTED
        assert "interrupted" in process.stderr.read().decode()
    names = image_files(out)
    finished = [name for name in names if name.endswith(".png")]
    assert 0 < len(finished) < 40
    for name in finished:  # every image there is whole
        image = Image.open(out / name)
        image.load()
        assert image.size == (640, 480)
    leftovers = [name for name in names if not name.endswith(".png")]
    if how == signal.SIGTERM:
        assert leftovers == []
    assert all(Path(name).name.startswith(batch.TEMP_PREFIX) for name in leftovers)

    # the next run removes what a killed one left, skips what is done and finishes the rest
    shutil.copy(out / finished[0], tmp_path / "first.png")
    rest = run_enhance(folder, "-o", out, "--scale", "4", "--model", sr_model, "-q", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert image_files(out) == [f"p{i:02d}_x4.png" for i in range(40)]
    assert f"{len(finished)} skipped" in rest.stderr
    assert (out / finished[0]).read_bytes() == (tmp_path / "first.png").read_bytes()


# -- pieces ----------------------------------------------------------------------------------------


def test_names_are_unique_and_never_an_input(tmp_path):
    a, b = tmp_path / "x.heic", tmp_path / "x.jpg"
    taken = tmp_path / "x_x2.jpg"
    for path in (a, b, taken):
        path.write_bytes(b"")
    items = [batch.Item(path, Path(path.name)) for path in (a, b, taken)]
    names = batch.Names(items)
    first = names.claim(items[0], tmp_path, 2.0, "jpeg")
    second = names.claim(items[1], tmp_path, 2.0, "jpeg")
    assert first.name == "x_heic_x2.jpg"  # x_x2.jpg is an input
    assert second.name == "x_jpg_x2.jpg"
    assert names.claim(items[2], tmp_path, 1.5, "png").name == "x_x2_x1.5.png"


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "out.png"
    batch.write_atomic(target, b"whole")
    assert target.read_bytes() == b"whole"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as any file the user writes

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        batch.write_atomic(target, b"new")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8080/predictions/enhancer", ("http://127.0.0.1:8080", "enhancer")),
        ("http://h:1/predictions/other/", ("http://h:1", "other")),
        ("https://h/api/predictions/enhancer", ("https://h/api", "enhancer")),
        ("http://h:8080", ("http://h:8080", "enhancer")),
    ],
)
def test_server_urls(url, expected):
    assert batch.split_server_url(url) == expected


def test_usage_errors_exit_2(tmp_path, sr_model, capsys):
    photo_file = tmp_path / "p.png"
    photo_file.write_bytes(to_bytes(photo()))
    out = tmp_path / "out"
    args = [str(photo_file), "-o", str(out), "--model", str(sr_model)]
    assert batch.main([*args, "--denoise", "0.5"]) == batch.EXIT_USAGE
    assert "--restore" in capsys.readouterr().err
    assert batch.main([*args, "--scale", "9"]) == batch.EXIT_USAGE
    assert batch.main([str(tmp_path / "missing"), "-o", str(out)]) == batch.EXIT_USAGE
    assert not out.exists()


def test_denoise_passes_through_to_a_family(tmp_path, sr_model, capsys):
    from tests.helpers.tiny_models import tiny_sr

    pair = tmp_path / "pair"
    restore = tiny_sr(pair, name="restore", seed=2)  # the clean tiny model's family
    photo_file = tmp_path / "p.png"
    photo_file.write_bytes(to_bytes(photo()))
    out = tmp_path / "out"
    args = [str(photo_file), "-o", str(out), "--model", str(sr_model), "--restore", str(restore)]
    assert batch.main([*args, "--denoise", "1", "-q"]) == 0, capsys.readouterr().err
    engine = Enhancer.load(sr_model, restore_path=restore)
    expected = engine.enhance(photo_file.read_bytes(), {"denoise": "1"}).data
    assert (out / "p_x2.png").read_bytes() == expected


@pytest.mark.e2e
def test_through_a_running_torchserve(torchserve, tree, tmp_path, sr_model):
    out = tmp_path / "out"
    key_file = torchserve.workdir / "key_file.json"
    args = [tree, "-o", out, "-r", "--server", torchserve.predictions_url, "--key-file", key_file]
    done = run_enhance(*args, "-q", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert image_files(out) == GOOD_OUTPUTS
    assert "3 enhanced" in done.stderr and "3 failed" in done.stderr
    local = tmp_path / "local"
    # the session's server runs the same seeded tiny model as sr_model
    run_enhance(tree, "-o", local, "-r", "--model", sr_model, "-q", cwd=tmp_path)
    for name in GOOD_OUTPUTS:  # the server and the in-process engine agree, byte for byte
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
