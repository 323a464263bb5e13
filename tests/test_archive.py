"""scripts.ops.archive and ``python -m scripts.archive``: what the .mar holds, when it is
rebuilt, and what it refuses to build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from enhancer.card import ModelCard, file_sha256
from enhancer.integrity import MANIFEST_FILE, parse_manifest
from scripts import archive as archive_cli
from scripts.ops import archive
from scripts.ops.paths import HANDLER, HANDLERS, MODEL_CONFIG, PACKAGE


@pytest.fixture
def model(tmp_path, sr_model) -> Path:
    """A private copy of the tiny model and its card (tests touch and alter them)."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(sr_model, folder / "enhancer.pt")
    shutil.copy(sr_model.with_suffix(".json"), folder / "enhancer.json")
    return folder / "enhancer.pt"


def members(mar: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(mar) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.mark.parametrize("store", [False, True])
def test_archive_holds_handler_engine_card_and_config(tmp_path, model, store):
    mar = archive.build_archive(model, export_path=tmp_path / "store", store=store)
    assert mar == tmp_path / "store" / "enhancer.mar"
    files = members(mar)
    assert files["enhancer_handler.py"] == HANDLER.read_bytes()  # the handler, at the top
    package = {
        p.relative_to(HANDLERS).as_posix(): p
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert {"enhancer/__init__.py", "enhancer/engine.py", "enhancer/imaging/decode.py"} <= set(
        package
    )
    # the enhancer package folder, whole, and nothing else of it (no caches)
    shipped = {name for name in files if name.startswith("enhancer/")}
    assert shipped == set(package)
    for name, path in package.items():
        assert files[name] == path.read_bytes()
    assert files["enhancer.pt"] == model.read_bytes()
    assert files["enhancer.json"] == model.with_suffix(".json").read_bytes()
    assert yaml.safe_load(files["model-config.yaml"]) == yaml.safe_load(MODEL_CONFIG.read_text())
    manifest = json.loads(files["MAR-INF/MANIFEST.json"])["model"]
    assert manifest["modelName"] == "enhancer"
    assert manifest["handler"] == "enhancer_handler.py"
    assert manifest["serializedFile"] == "enhancer.pt"
    assert manifest["modelVersion"] == ModelCard.load(model.with_suffix(".json")).version
    with zipfile.ZipFile(mar) as z:
        kinds = {info.compress_type for info in z.infolist()}
    assert kinds == ({zipfile.ZIP_STORED} if store else {zipfile.ZIP_DEFLATED})


def test_name_and_version_flags(tmp_path, model):
    mar = archive.build_archive(model, name="sharp", version="7.1", export_path=tmp_path)
    assert mar.name == "sharp.mar"
    manifest = json.loads(members(mar)["MAR-INF/MANIFEST.json"])["model"]
    assert (manifest["modelName"], manifest["modelVersion"]) == ("sharp", "7.1")


def test_rebuilds_only_when_an_input_changes(tmp_path, model):
    mar = archive.build_archive(model, export_path=tmp_path)
    built = mar.stat().st_mtime_ns
    assert not archive.is_stale(mar, model)
    assert archive.build_archive(model, export_path=tmp_path).stat().st_mtime_ns == built

    earlier = mar.stat().st_mtime - 60
    os.utime(mar, (earlier, earlier))  # so the card is now newer than the archive
    assert archive.is_stale(mar, model)
    archive.build_archive(model, export_path=tmp_path)
    assert not archive.is_stale(mar, model)

    assert (
        archive.build_archive(model, export_path=tmp_path, force=True).stat().st_mtime_ns != built
    )


def test_stale_when_contents_differ_even_if_older(tmp_path, model):
    """Another model, config, name or version than the archive holds: rebuild, mtimes aside."""
    mar = archive.build_archive(model, export_path=tmp_path)
    other_config = tmp_path / "model-config.yaml"
    other_config.write_text(MODEL_CONFIG.read_text().replace("batchSize: 4", "batchSize: 1"))
    os.utime(other_config, (0, 0))
    assert archive.is_stale(mar, model, config_file=other_config)
    assert archive.is_stale(mar, model, name="other")
    assert archive.is_stale(mar, model, version="9.9")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(model, other / "restore.pt")
    shutil.copy(model.with_suffix(".json"), other / "restore.json")
    os.utime(other / "restore.pt", (0, 0))
    os.utime(other / "restore.json", (0, 0))
    assert archive.is_stale(mar, other / "restore.pt")


def test_refuses_a_card_that_does_not_match_the_model(tmp_path, model):
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveError, match="does not match its card"):
        archive.build_archive(model, export_path=tmp_path / "store")
    assert not (tmp_path / "store" / "enhancer.mar").exists()


def test_refuses_a_model_without_its_card(tmp_path, model):
    model.with_suffix(".json").unlink()
    with pytest.raises(archive.ArchiveError, match=r"enhancer\.json not found"):
        archive.build_archive(model, export_path=tmp_path)


def test_command_line_lists_contents_and_sha256(tmp_path, model, capsys):
    assert archive_cli.main(["--model", str(model), "--export-path", str(tmp_path), "--store"]) == 0
    out = capsys.readouterr().out
    mar = tmp_path / "enhancer.mar"
    assert f"archive: built: {mar}" in out
    assert "enhancer_handler.py" in out and "model-config.yaml" in out and "enhancer.json" in out
    assert f"sha256 {archive.file_sha256(mar)}  enhancer.mar" in out
    assert archive_cli.main(["--model", str(model), "--export-path", str(tmp_path)]) == 0
    assert "archive: up to date" in capsys.readouterr().out


def test_command_line_reports_a_missing_model(tmp_path, capsys):
    assert (
        archive_cli.main(["--model", str(tmp_path / "nothing.pt"), "--export-path", str(tmp_path)])
        == 1
    )
    assert "nothing.pt not found" in capsys.readouterr().err


def test_a_restore_model_ships_as_restore_pt_and_makes_the_archive_stale(tmp_path, model):
    from tests.helpers.tiny_models import TinySR, save_model, tiny_sr

    restore = tiny_sr(tmp_path / "other", name="my-restore", seed=9)
    mar = archive.build_archive(model, export_path=tmp_path / "store", restore=restore)
    with zipfile.ZipFile(mar) as packed:
        assert packed.read("restore.pt") == restore.read_bytes()
        assert packed.read("restore.json") == restore.with_suffix(".json").read_bytes()
    assert not archive.is_stale(mar, model, restore=restore)
    assert archive.is_stale(mar, model)  # the same archive without the pair is another archive
    wrong = save_model(tmp_path / "wrong", TinySR(depth=2), name="restore", tile=64)
    with pytest.raises(archive.ArchiveError, match="not one family"):
        archive.build_archive(model, export_path=tmp_path / "store2", restore=wrong)


def test_a_restore_pt_beside_the_model_makes_the_pair_by_default(tmp_path, capsys):
    """model_store/ ships enhancer.pt and restore.pt: `make run` and the archive command serve the
    pair (the denoise option) without being told; --no-restore archives the model alone."""
    from scripts.ops.paths import restore_beside
    from tests.helpers.tiny_models import tiny_sr

    store = tmp_path / "models"
    clean = tiny_sr(store, name="enhancer", seed=1)
    assert restore_beside(clean) is None
    restore = tiny_sr(store, name="restore", seed=2)
    assert restore_beside(clean) == restore and restore_beside(restore) is None
    out = tmp_path / "out"
    assert archive_cli.main(["--model", str(clean), "--export-path", str(out)]) == 0
    with zipfile.ZipFile(out / "enhancer.mar") as packed:
        assert packed.read("restore.pt") == restore.read_bytes()
    assert archive_cli.main(["--model", str(clean), "--export-path", str(out), "--no-restore"]) == 0
    with zipfile.ZipFile(out / "enhancer.mar") as packed:
        assert "restore.pt" not in packed.namelist()
    restore.with_suffix(".json").unlink()  # a model without its card pairs with nothing
    assert restore_beside(clean) is None


def test_a_native_4x_model_beside_ships_in_the_archive_and_serves(tmp_path, model):
    """enhancer4.pt + enhancer4.json beside the model go into the archive, and the worker's door
    loads them (enhancer.engine.native_beside): x4 is then one native pass."""
    from enhancer.engine import Enhancer, native_beside
    from tests.helpers.tiny_models import tiny_sr4

    store = tmp_path / "store"
    mar = archive.build_archive(model, export_path=store)
    assert "enhancer4.pt" not in members(mar) and native_beside(model) is None
    native = tiny_sr4(model.parent, name="enhancer4", seed=3)
    assert native_beside(model) == native
    assert archive.is_stale(mar, model)  # a native model appeared beside it
    mar = archive.build_archive(model, export_path=store)
    packed = members(mar)
    assert packed["enhancer4.pt"] == native.read_bytes()
    assert packed["enhancer4.json"] == native.with_suffix(".json").read_bytes()
    assert not archive.is_stale(mar, model)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    engine = Enhancer.load(
        unpacked / "enhancer.pt", native_path=native_beside(unpacked / "enhancer.pt")
    )
    assert engine.native is not None and engine.native.card.scale == 4
    # a native card that does not match its model refuses the build
    card = json.loads(native.with_suffix(".json").read_text())
    native.with_suffix(".json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(archive.ArchiveError, match="sha256"):
        archive.build_archive(model, export_path=store, force=True)


# -- verification: SHA256SUMS inside, the whole file's sha256 beside it ----------------------------


def test_archive_lists_every_member_in_its_manifest_and_records_its_sha256(tmp_path, model):
    mar = archive.build_archive(model, export_path=tmp_path / "store")
    files = members(mar)
    listed = parse_manifest(files[MANIFEST_FILE].decode())
    assert set(listed) == set(files) - {MANIFEST_FILE}  # MAR-INF/MANIFEST.json included
    assert {"enhancer_handler.py", "enhancer.pt", "model-config.yaml", "enhancer/engine.py"} <= set(
        listed
    )
    assert all(hashlib.sha256(files[name]).hexdigest() == listed[name] for name in listed)
    assert archive.sidecar(mar).read_text() == f"{file_sha256(mar)}  enhancer.mar\n"
    assert archive.verify_archive(mar) == len(listed)
    # an archive without its record is rebuilt (and so gets one)
    archive.sidecar(mar).unlink()
    assert archive.is_stale(mar, model)


@pytest.mark.parametrize("where", [0.0, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("store", [False, True])
def test_one_flipped_byte_anywhere_is_a_damaged_archive(tmp_path, model, where, store):
    mar = archive.build_archive(model, export_path=tmp_path / "store", store=store)
    data = bytearray(mar.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    mar.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveDamaged, match="enhancer.mar is damaged: its sha256"):
        archive.verify_archive(mar)
    # without the record beside it, the CRCs and the manifest inside still tell (or the zip's
    # own structure does); a flip in the middle lands in a member's bytes
    archive.sidecar(mar).unlink()
    if where == 0.5:
        with pytest.raises(archive.ArchiveDamaged, match="enhancer.mar is damaged"):
            archive.verify_archive(mar)


def test_a_rezipped_archive_with_an_edited_member_is_named(tmp_path, model):
    mar = archive.build_archive(model, export_path=tmp_path / "store")
    edited = tmp_path / "edited" / "enhancer.mar"
    edited.parent.mkdir()
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(edited, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "enhancer/engine.py":
                data += b"\n# edited\n"
            target.writestr(info, data)
    with pytest.raises(archive.ArchiveDamaged, match="member enhancer/engine.py differs"):
        archive.verify_archive(edited)
