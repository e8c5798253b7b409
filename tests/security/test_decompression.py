"""Decompression bombs: a small data file that expands to gigabytes is refused before it is expanded.

The bombs are real: a zip member of hundreds of MB of zeros that compresses to a few hundred KB, a PNG whose
pixel data really inflates to 256 MB, an .npz whose array header claims gigabytes, a zip whose member lies about
its size. Memory is measured in a fresh interpreter (its own peak RSS), where nothing else has raised the peak.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from repfx_deploy.data.archive import read_stream
from repfx_deploy.data.datasets import load_dataset
from repfx_deploy.data.limits import DataLimits
from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError
from repfx_deploy.spec import InputSpec

GRAY = InputSpec("input", (1, 1, 8, 8))
ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int) -> bytes:
    """A valid side x side 8-bit grayscale PNG of zeros: a few hundred KB that PIL would inflate to side**2 bytes."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's zeros
    rows_per_chunk = max(1, MB // len(row))
    parts = []
    for start in range(0, side, rows_per_chunk):
        parts.append(compressor.compress(row * min(rows_per_chunk, side - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Built once: each is a real bomb, small on disk."""
    root = tmp_path_factory.mktemp("bombs")
    zeros = root / "zeros.zip"  # one "image" member of 300 MiB of zeros, over the 256 MiB member bound
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("cls/ok.png", _small_png())
        with z.open("cls/bomb.png", "w", force_zip64=True) as member:
            chunk = bytes(MB)
            for _ in range(300):
                member.write(chunk)
    png = root / "png.zip"  # a 16384 x 16384 PNG: 268 Mpixel, PIL's own bound refuses it too
    with zipfile.ZipFile(png, "w", zipfile.ZIP_STORED) as z:
        z.writestr("cls/huge.png", _bomb_png(16384))
    folder = root / "folder" / "cls"  # the same PNG as a plain file in an image folder
    folder.mkdir(parents=True)
    (folder / "huge.png").write_bytes(_bomb_png(9000))  # 81 Mpixel: under PIL's default bound, over ours
    return {"zeros": zeros, "png": png, "folder": folder.parent}


def test_zip_bomb_member_refused_by_declared_size(bombs):
    assert bombs["zeros"].stat().st_size < 2 * MB  # a real bomb: 300 MiB inside a file this small
    with pytest.raises(DataError, match="REPFX_DATA_MAX_FILE_MB") as err:
        load_dataset(bombs["zeros"], GRAY, Preprocess())
    assert "bomb.png" in err.value.problem and "300.0 MiB" in err.value.problem


def test_png_bomb_refused_before_decoding_when_zipped(bombs):
    assert bombs["png"].stat().st_size < 2 * MB
    with pytest.raises(DataError, match="REPFX_DATA_MAX_IMAGE_PIXELS") as err:
        load_dataset(bombs["png"], GRAY, Preprocess(size=8))
    assert "huge.png" in err.value.problem


def test_png_under_pil_default_but_over_our_bound_refused_in_folder(bombs):
    # 81 Mpixel passes PIL's own default (89 Mpixel) silently; the loader's bound is lower
    with pytest.raises(DataError, match="REPFX_DATA_MAX_IMAGE_PIXELS"):
        load_dataset(bombs["folder"], GRAY, Preprocess(size=8))


def test_pil_bomb_check_runs_with_our_bound_and_is_a_data_error(bombs, monkeypatch):
    # PIL's own check (its DecompressionBombError / Warning) is set to the loader's bound and becomes a DataError
    monkeypatch.setenv("REPFX_DATA_MAX_IMAGE_PIXELS", str(1 << 20))
    real_open = Image.open
    seen = []

    def spy(*a, **k):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real_open(*a, **k)

    monkeypatch.setattr(Image, "open", spy)
    with pytest.raises(DataError, match="REPFX_DATA_MAX_IMAGE_PIXELS"):
        load_dataset(bombs["folder"], GRAY, Preprocess(size=8))
    assert seen[0] == 1 << 20  # PIL opened it under our bound
    assert Image.MAX_IMAGE_PIXELS != 1 << 20  # and got its own back


def test_raised_limit_lets_a_large_genuine_image_through(tmp_path, monkeypatch):
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    Image.new("L", (300, 300), 9).save(folder / "a.png")
    monkeypatch.setenv("REPFX_DATA_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(DataError, match="REPFX_DATA_MAX_IMAGE_PIXELS=90000"):
        load_dataset(tmp_path / "imgs", GRAY, Preprocess(size=8))
    monkeypatch.setenv("REPFX_DATA_MAX_IMAGE_PIXELS", "100000")
    assert len(load_dataset(tmp_path / "imgs", GRAY, Preprocess(size=8))) == 1


def _peak_rss_mb(path: Path) -> tuple[float, str]:
    """Load ``path`` in a fresh interpreter; its peak RSS (MB) and the error it raised.

    The peak is the new process's own high-water mark (``VmHWM``): ``getrusage`` would also count the parent's
    memory, which Linux carries over into ``ru_maxrss`` across the fork and exec.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc/self/status (Linux)")
    code = f"""
import json
from repfx_deploy.data.datasets import load_dataset
from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.spec import InputSpec
try:
    load_dataset({str(path)!r}, InputSpec("input", (1, 1, 8, 8)), Preprocess(size=8))
    error = ""
except Exception as e:
    error = type(e).__name__ + ": " + str(e)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(json.dumps({{"rss_mb": int(status[0]) / 1024, "error": error}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return doc["rss_mb"], doc["error"]


@pytest.mark.parametrize("bomb", ["zeros", "png"])
def test_bomb_refusal_keeps_memory_bounded(bombs, bomb):
    rss_mb, error = _peak_rss_mb(bombs[bomb])
    assert error.startswith("DataError")
    assert rss_mb < 250, f"peak RSS {rss_mb:.0f} MB while refusing a bomb"


def _lying_zip(path: Path, real: int, declared: int) -> None:
    """A zip whose one member holds ``real`` bytes but whose headers (local and central) declare ``declared``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cls/a.png", bytes(real))
    blob = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed-size fields
        at = blob.find(signature)
        blob[at + offset : at + offset + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(blob))


def test_zip_member_lying_about_its_size_cannot_expand_past_the_bound(tmp_path, monkeypatch):
    path = tmp_path / "liar.zip"
    _lying_zip(path, real=20 * MB, declared=1000)
    assert zipfile.ZipFile(path).getinfo("cls/a.png").file_size == 1000
    monkeypatch.setenv("REPFX_DATA_MAX_FILE_MB", "1")
    with pytest.raises(DataError) as err:
        load_dataset(path, GRAY, Preprocess(size=8))
    # cut off at the bound or at the declared size (whose CRC then fails): never 20 MiB in memory
    assert "the member 'cls/a.png'" in err.value.problem


def test_stream_yielding_more_than_the_bound_is_cut_off():
    with pytest.raises(DataError, match="more bytes than it declares"):
        read_stream(io.BytesIO(bytes(3 * MB)), MB, "REPFX_DATA_MAX_FILE_MB", what="the member 'x'")
    assert read_stream(io.BytesIO(b"abc"), MB, "REPFX_DATA_MAX_FILE_MB", what="x") == b"abc"


def test_symlink_to_dev_zero_in_image_folder_refused(tmp_path, monkeypatch):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    (tmp_path / "imgs" / "cls").mkdir(parents=True)
    (tmp_path / "imgs" / "cls" / "a.png").symlink_to("/dev/zero")  # stat says 0 bytes; reading never ends
    monkeypatch.setenv("REPFX_DATA_MAX_FILE_MB", "4")
    with pytest.raises(DataError, match="REPFX_DATA_MAX_FILE_MB"):
        load_dataset(tmp_path / "imgs", GRAY, Preprocess(size=8))


def test_zip_with_too_many_entries_refused_before_listing(tmp_path, monkeypatch):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(50):
            z.writestr(f"cls/{i}.png", b"")
    monkeypatch.setenv("REPFX_DATA_MAX_FILES", "10")
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("the directory was read"))
    with pytest.raises(DataError, match="REPFX_DATA_MAX_FILES=50"):
        load_dataset(path, GRAY, Preprocess())


def test_image_folder_with_too_many_files_refused(tmp_path, monkeypatch):
    (tmp_path / "imgs" / "cls").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "imgs" / "cls" / f"{i}.png").write_bytes(_small_png())
    monkeypatch.setenv("REPFX_DATA_MAX_FILES", "10")
    with pytest.raises(DataError, match="REPFX_DATA_MAX_FILES"):
        load_dataset(tmp_path / "imgs", GRAY, Preprocess())


def _npz_with_header(path: Path, shape: tuple[int, ...], payload: bytes) -> None:
    """An .npz whose x.npy header claims ``shape`` (float32) in front of ``payload``, deflated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + payload)


def test_npz_header_claiming_gigabytes_refused_before_allocating(tmp_path):
    path = tmp_path / "claim.npz"
    _npz_with_header(path, (1 << 20, 1, 64, 64), bytes(1024))  # claims 16 GiB
    with pytest.raises(DataError, match="REPFX_DATA_MAX_TOTAL_MB"):
        load_dataset(path, InputSpec("input", (1, 1, 64, 64)), Preprocess())


def test_npz_bomb_of_zeros_refused_by_total_bound(tmp_path, monkeypatch):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((1024, 1, 64, 64), np.float32))  # 16 MiB in ~16 KiB
    assert path.stat().st_size < MB
    monkeypatch.setenv("REPFX_DATA_MAX_TOTAL_MB", "8")
    with pytest.raises(DataError, match="REPFX_DATA_MAX_TOTAL_MB"):
        load_dataset(path, InputSpec("input", (1, 1, 64, 64)), Preprocess())
    monkeypatch.setenv("REPFX_DATA_MAX_TOTAL_MB", "32")
    assert len(load_dataset(path, InputSpec("input", (1, 1, 64, 64)), Preprocess())) == 1024


def test_bad_limit_setting_is_a_data_error(monkeypatch):
    monkeypatch.setenv("REPFX_DATA_MAX_FILE_MB", "lots")
    with pytest.raises(DataError, match="REPFX_DATA_MAX_FILE_MB"):
        DataLimits.from_env()


def test_cli_refuses_a_zip_bomb_with_exit_2(bombs, tmp_path, tiny_state_dict, fixtures_dir):
    from repfx_deploy.cli.app import app

    args = ["compress", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir]
    args += ["--input-shape", "1,3,8,8", "--calibration", bombs["zeros"], "-o", tmp_path / "out", "--json"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "DataError" and "bomb.png" in error["problem"]
    assert "REPFX_DATA_MAX_FILE_MB" in error["fix"] and not (tmp_path / "out").exists()
