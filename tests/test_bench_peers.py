"""scripts/bench_peers.py (``python -m scripts.bench --peers``) without the peers: the arithmetic,
the table, and how missing peers are reported. The peers themselves are optional extras that no
test needs."""

from __future__ import annotations

import sys

import pytest

from scripts import bench, bench_peers
from scripts.bench_peers import Peer

PEER_MODULES = sorted({p.module for p in bench_peers.PEERS} | {"cv2"})


@pytest.fixture
def no_peers(monkeypatch):
    """Every peer's package made unimportable (as on a machine without the extra)."""
    for name in PEER_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def test_bench_peers_without_peers_exits_cleanly_naming_each(no_peers, capsys):
    assert bench.main(["--peers"]) == 0
    out = capsys.readouterr().out
    for peer in bench_peers.PEERS:
        assert f"peer {peer.name}: not installed (pip install {peer.wheel})" in out
    assert "weights not shipped in any wheel" in out
    assert "no peer available" in out


def test_unknown_peer_name_is_refused(capsys):
    assert bench.main(["--peers", "--peer-names", "nope"]) == 2
    assert "unknown peers" in capsys.readouterr().out


def test_import_failure_names_the_system_packages(monkeypatch):
    def broken(name):
        raise ImportError("libvulkan.so.1: cannot open shared object file")

    monkeypatch.setattr(bench_peers.importlib, "import_module", broken)
    reason = bench_peers.missing_reason(bench_peers.PEERS[0])
    assert reason.startswith("import failed: libvulkan.so.1")
    assert "libvulkan1 and libomp5" in reason


def test_a_peer_without_weights_is_reported_not_run():
    def make(scale, threads, denoise, weights, tile):
        raise LookupError("weights not shipped in any wheel")

    def works(scale, threads, denoise, weights, tile):
        return lambda image: image

    peers = [
        Peer("weightless", "json", "json-wheel", (2, 4), make),
        Peer("present", "json", "json-wheel", (2, 4), works),
        Peer("x2 only", "json", "json-wheel", (2,), works),
    ]
    methods, missing = bench_peers.peer_methods(peers, [2, 4], 2, 0.0, None)
    assert [m.name for m in methods] == ["present"]
    assert missing == {
        "weightless": "not available: weights not shipped in any wheel",
        "x2 only": "no model for x[4]",
    }


def test_waifu2x_noise_follows_denoise():
    assert [bench_peers.waifu2x_noise(d) for d in (0, 0.1, 0.25, 0.5, 0.75, 1)] == [
        -1,
        0,
        0,
        1,
        2,
        3,
    ]
    with pytest.raises(ValueError):
        bench_peers.waifu2x_noise(1.5)


def test_speed_rows_ratio_to_the_engine():
    rows = bench_peers.speed_rows(
        {"engine": [2.0, 4.0, 3.0], "peer": [6.0, 6.0, 9.0]}, 3_000_000, "engine"
    )
    engine, peer = rows
    assert engine["median_s"] == 3.0 and engine["output_mp_per_s"] == pytest.approx(1.0)
    assert engine["vs_engine"] == pytest.approx(1.0)
    assert peer["output_mp_per_s"] == pytest.approx(0.5)
    assert peer["vs_engine"] == pytest.approx(0.5)  # half the engine's speed
    assert (peer["min_s"], peer["max_s"], peer["runs"]) == (6.0, 9.0, 3)


def test_pass_work_and_peak_fraction():
    assert bench_peers.pass_work(2) == 1.0
    assert bench_peers.pass_work(4) == pytest.approx(1.25)
    # 1 output MP/s x 100 k MAC x 2 FLOP = 200 GFLOP/s against 2 x 32 x 2.5 GHz = 160 GFLOP/s
    peak = bench_peers.peak_fraction(1.0, 100_000, 1.0, cores=2, ghz=2.5)
    assert peak["gflops"] == pytest.approx(200.0)
    assert peak["peak_gflops"] == pytest.approx(160.0)
    assert peak["fraction"] == pytest.approx(1.25)


def test_table_and_where_a_peer_is_ahead():
    speed = {
        2: bench_peers.speed_rows({"engine": [2.0], "fast": [1.0], "slow": [4.0]}, 1e6, "engine")
    }
    psnr = {
        2: {
            "set5": {"bicubic": 33.0, "engine": 37.0, "fast": 37.1, "slow": 38.0},
            "set14": {"bicubic": 30.0, "engine": 33.0, "fast": 32.96, "slow": 34.0},
        }
    }
    text = bench_peers.table(speed, psnr, {2: (576, 432)}, ["engine", "fast", "slow"])
    lines = text.splitlines()
    assert lines[0].startswith("| scale | method | p50 s | output MP/s | vs engine |")
    assert "set14 Y-PSNR | set5 Y-PSNR |" in lines[0]
    assert "| x2 (576x432 in) | fast | 1.00 | 1.000 | 2.00x | 32.96 | 37.10 |" in lines
    assert "| x2 | bicubic |  |  |  | 30.00 | 33.00 |" in lines
    ahead = bench_peers.behind(speed, psnr)
    assert ahead == ["x2: fast is 2.00x the engine's speed at -0.04 dB or better"]


def test_speed_input_gives_the_same_output_size_at_each_scale(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (768, 512), (10, 20, 30)).save(path)
    x2 = bench_peers.speed_input(path, 2, 1.0)
    x4 = bench_peers.speed_input(path, 4, 1.0)
    assert x2.size == (576, 432) and x4.size == (288, 216)
    assert bench_peers.speed_input(path, 2, 100.0).size == (768, 512)  # the photo, no larger


def test_gpu_bench_table():
    from scripts.gpu_bench import markdown

    rows = [
        {
            "precision": "bfloat16",
            "channels_last": True,
            "batch": 8,
            "eager_s": 0.004,
            "graph_s": 0.002,
            "output_mp_per_s": 1048.6,
            "tflops": 164.7,
            "peak_fraction": 0.166,
        },
        {"precision": "float16", "batch": 32, "error": "non-finite"},
    ]
    lines = markdown(rows).splitlines()
    assert lines[2] == "| bfloat16 | channels_last | 8 | 4.00 | 2.00 | 1048.6 | 164.70 | 16.6% |"
    assert lines[3].startswith("| float16 | | 32 | non-finite |")
