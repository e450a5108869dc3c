"""The dataset layer on real files: every source, every kind of bad file, thumbnails, fingerprints."""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder, make_holidays, scene_image
from PIL import Image

from simlab.data import DATASET_KINDS, Dataset, DatasetError, Problem, images, load_dataset, parse_spec
from simlab.data.images import ImageError, check_image, load_for_model, open_rgb, thumbnail, thumbnail_data_uri


@pytest.fixture(autouse=True)
def _never_the_repo_cache(tmp_cache):
    """Every test here writes (thumbnails, memo) into a temporary cache only."""
    return tmp_cache


# --------------------------------------------------------------------------- bad-file makers


def jpeg_bytes(size=(64, 48), group=0, **save) -> bytes:
    buf = io.BytesIO()
    scene_image(group, 0, size).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width=40_000, height=40_000) -> bytes:
    """A tiny PNG whose header claims a huge image (the classic decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def write_bad_files(d: Path) -> dict[str, str]:
    """One file of each unusable kind; returns name -> expected reason (prefix)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n" * 20)
    j = jpeg_bytes((160, 120))
    (d / "trunc.jpg").write_bytes(j[: len(j) * 6 // 10])
    p = png_bytes(scene_image(3, 0, (160, 120)))
    (d / "trunc.png").write_bytes(p[: len(p) * 6 // 10])
    (d / "bomb.png").write_bytes(bomb_png())
    return {
        "zero.jpg": "zero-byte file",
        "text.jpg": "not an image",
        "trunc.jpg": "truncated",
        "trunc.png": "truncated",
        "bomb.png": "decompression bomb (1600000000 pixels)",
    }


# --------------------------------------------------------------------------- images.py


@pytest.mark.parametrize("name", ["zero.jpg", "text.jpg", "trunc.jpg", "trunc.png", "bomb.png"])
def test_check_image_reasons(tmp_path, name):
    expected = write_bad_files(tmp_path)[name]
    with pytest.raises(ImageError) as err:
        check_image(tmp_path / name)
    assert str(err.value).startswith(expected)
    # the other entry points refuse the same files with the same reason
    with pytest.raises(ImageError):
        open_rgb(tmp_path / name)
    with pytest.raises(ImageError):
        load_for_model(tmp_path / name, 32)


def test_check_image_good_and_missing(tmp_path):
    p = tmp_path / "ok.jpg"
    p.write_bytes(jpeg_bytes())
    check_image(p)  # no exception
    with pytest.raises(ImageError, match="file not found"):
        check_image(tmp_path / "nope.jpg")


def test_max_pixels_read_at_call_time(tmp_path, monkeypatch):
    p = tmp_path / "ok.png"
    scene_image(1, 0, (64, 48)).save(p)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"decompression bomb \(3072 pixels\)"):
        check_image(p)
    with pytest.raises(ImageError, match="decompression bomb"):
        open_rgb(p)
    assert Image.MAX_IMAGE_PIXELS is not None


def test_modes_become_8bit_rgb(tmp_path):
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.jpg", "JPEG", quality=95)
    scene_image(2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    pal_t = Image.new("P", (10, 10), 0)
    pal_t.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal_t.putpixel((0, 0), 1)
    pal_t.save(tmp_path / "pal_t.png", transparency=0)
    g16 = np.zeros((8, 8), dtype=np.uint16)
    g16[0, 0], g16[0, 1], g16[0, 2] = 65535, 32896, 257
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8), "L").save(tmp_path / "gray.png")
    Image.new("1", (8, 8), 1).save(tmp_path / "bw.png")

    for name in ["cmyk.jpg", "pal.png", "pal_t.png", "g16.png", "rgba.png", "gray.png", "bw.png"]:
        im = open_rgb(tmp_path / name)
        assert im.mode == "RGB", name
        arr = load_for_model(tmp_path / name, 16)
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8, name

    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    r, g, b = open_rgb(tmp_path / "cmyk.jpg").getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60

    g = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert tuple(g[0, 0]) == (255, 255, 255) and g[0, 1, 0] == 128 and g[0, 2, 0] == 1 and g[1, 1, 0] == 0

    a = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert tuple(a[0, 0]) == (200, 0, 0)
    assert tuple(a[5, 5]) == (255, 255, 255)  # transparent -> white

    t = np.asarray(open_rgb(tmp_path / "pal_t.png"))
    assert tuple(t[0, 0]) == (200, 10, 10) and tuple(t[5, 5]) == (255, 255, 255)


def exif_rotated_jpeg(path: Path, size=(80, 40), orientation=6) -> None:
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half red (stored pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    exif_rotated_jpeg(p)
    assert Image.open(p).size == (80, 40)
    im = open_rgb(p)
    assert im.size == (40, 80)  # orientation 6: rotate 90 clockwise to display
    top = np.asarray(im)[5, 20]
    assert top[0] > 200 and top[2] < 60  # stored left half (red) is now on top
    t = Image.open(thumbnail(p, 64))
    assert t.size[1] > t.size[0]
    arr = load_for_model(p, 20, fit="pad")
    assert arr[:, :3].max() == 0 and arr[:, -3:].max() == 0  # tall image: bars left and right


def test_load_for_model_crop_pad_and_draft(tmp_path):
    big = tmp_path / "big.jpg"
    scene_image(5, 0, (2000, 1000)).save(big, "JPEG", quality=90)
    draft = open_rgb(big, draft_size=224)
    assert min(draft.size) >= 224 and draft.size[0] < 2000  # decoded at reduced scale
    assert open_rgb(big).size == (2000, 1000)
    for size in (224, 300, 999):
        im = open_rgb(big, draft_size=size)
        assert min(im.size) >= size
    crop = load_for_model(big, 224)
    pad = load_for_model(big, 224, fit="pad")
    assert crop.shape == pad.shape == (224, 224, 3)
    assert crop.dtype == pad.dtype == np.uint8
    assert pad[:40].max() == 0 and pad[-40:].max() == 0  # wide image letterboxed top and bottom
    assert crop[:40].max() > 0
    with pytest.raises(ValueError):
        load_for_model(big, 224, fit="stretch")


def test_thumbnail_cached_and_bounded(tmp_cache, tmp_path):
    p = tmp_path / "big.png"
    scene_image(4, 0, (900, 500)).save(p)
    t1 = thumbnail(p, 512)
    assert t1.is_file() and str(t1).startswith(str(tmp_cache))
    with Image.open(t1) as im:
        assert max(im.size) == 256 and im.format == "JPEG"
    mtime = t1.stat().st_mtime_ns
    time.sleep(0.01)
    t2 = thumbnail(p, 512)
    assert t2 == t1 and t2.stat().st_mtime_ns == mtime  # not rewritten
    small = thumbnail(p, 100)
    assert small != t1
    with Image.open(small) as im:
        assert max(im.size) == 100
    uri = thumbnail_data_uri(p)
    assert uri.startswith("data:image/jpeg;base64,")
    # an edited file gets a fresh thumbnail
    scene_image(9, 0, (300, 500)).save(p)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    t3 = thumbnail(p, 512)
    assert t3 != t1
    with Image.open(t3) as im:
        assert im.size[1] == 256 and im.size[0] < 256
    assert not list(Path(tmp_cache, "thumbs").rglob(".*"))  # no temp files left


# --------------------------------------------------------------------------- sources


def test_holidays_source(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    written = make_holidays(d, [3, 2, 1, 4])
    (d / "readme.txt").write_text("hello")
    (d / "IMG_0001.jpg").write_bytes(jpeg_bytes())
    (d / ".DS_Store").write_bytes(b"\0\0")
    ds = load_dataset(f"holidays:{d}")
    assert isinstance(ds, Dataset)
    assert ds.spec == f"holidays:{d.resolve()}"
    assert ds.root == d.resolve()
    assert ds.paths == [str(p.resolve()) for p in written]
    assert ds.groups == ["1000"] * 3 + ["1001"] * 2 + ["1002"] + ["1003"] * 4
    assert ds.n_images == 10 and ds.n_groups == 4
    assert ds.group_sizes() == {"1000": 3, "1001": 2, "1002": 1, "1003": 4}  # group of one kept and counted
    assert ds.queries == [0, 3, 5, 6] == ds.query_indices()
    assert {Path(p.path).name: p.reason for p in ds.problems} == {
        "readme.txt": "name does not match NNNNNN.jpg",
        "IMG_0001.jpg": "name does not match NNNNNN.jpg",
    }
    assert all(len(dg) == 32 and int(dg, 16) >= 0 for dg in ds.digests)
    assert len(set(ds.digests)) == 10
    df = ds.to_frame()
    assert list(df.columns) == ["path", "group", "name"] and len(df) == 10
    assert df["name"].iloc[0] == "100000.jpg"


def test_holidays_jpg_subfolder_and_query_is_lowest(tmp_cache, tmp_path):
    d = tmp_path / "holidays"
    make_holidays(d / "jpg", [2, 2])
    os.rename(d / "jpg" / "100100.jpg", d / "jpg" / "100105.jpg")  # group 1001 has no XXXX00
    (d / "eval_holidays.txt").write_text("not looked at")
    ds = load_dataset(f"holidays:{d}")
    assert ds.root == (d / "jpg").resolve()
    assert ds.n_images == 4 and ds.problems == []
    assert [Path(ds.paths[i]).name for i in ds.query_indices()] == ["100000.jpg", "100101.jpg"]


def test_bad_files_skipped_and_reported(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    make_holidays(d, [2, 2])
    bad = write_bad_files(tmp_path / "bad")
    names = {}
    for i, (name, reason) in enumerate(bad.items()):
        target = d / f"{1100 + i:04d}00{Path(name).suffix.replace('.png', '.jpg')}"
        os.rename(tmp_path / "bad" / name, target)
        names[target.name] = reason
    ds = load_dataset(f"holidays:{d}")
    assert ds.n_images == 4 and ds.n_groups == 2
    got = {Path(p.path).name: p.reason for p in ds.problems}
    assert got == names
    assert all(isinstance(p, Problem) and Path(p.path).is_absolute() for p in ds.problems)
    # memoised verdicts give the same answer
    ds2 = load_dataset(f"holidays:{d}")
    assert ds2.problems == ds.problems and ds2.paths == ds.paths


def test_folder_source(tmp_cache, tmp_path):
    d = tmp_path / "scenes"
    make_folder(d, [2, 3])
    (d / "g0" / "sub").mkdir()
    scene_image(0, 5).save(d / "g0" / "sub" / "deep.webp")
    scene_image(7, 0).save(d / "loose.png")  # top level: not in a group
    (d / "g1" / "notes.txt").write_text("not an image")
    tricky = d / "g2" / "<img src=x onerror=alert(1)>.jpg"
    tricky.parent.mkdir()
    tricky.write_bytes(jpeg_bytes(group=3))
    ds = load_dataset(f"folder:{d}")
    assert ds.spec == f"folder:{d.resolve()}"
    assert ds.group_sizes() == {"g0": 3, "g1": 3, "g2": 1}
    assert str(tricky) in ds.paths
    assert ds.queries is None
    assert ds.query_indices() == [0, 3, 6]
    assert {Path(p.path).name: p.reason for p in ds.problems} == {
        "loose.png": "not in a group subfolder",
        "notes.txt": "not an image",
    }
    df = ds.to_frame()
    assert "<img src=x onerror=alert(1)>.jpg" in set(df["name"])


def test_csv_source_relative_paths(tmp_cache, tmp_path):
    imgs = make_folder(tmp_path / "data" / "imgs", [2, 2, 1])
    lst = tmp_path / "data" / "list.csv"
    rows = ["path,group"]
    for p in imgs:
        rows.append(f"{p.relative_to(lst.parent)},{p.parent.name}")
    rows.append("imgs/missing.png,g9")
    rows.append(f"{imgs[0]},g0")  # absolute path, listed twice
    outside = tmp_path / "elsewhere" / "x.jpg"
    outside.parent.mkdir()
    outside.write_bytes(jpeg_bytes(group=8))
    rows.append("../elsewhere/x.jpg,  outside ")
    lst.write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"csv:{lst}")
    assert ds.spec == f"csv:{lst.resolve()}"
    assert ds.root == lst.parent.resolve()
    assert ds.group_sizes() == {"g0": 2, "g1": 2, "g2": 1, "outside": 1}
    assert str(outside) in ds.paths
    reasons = {Path(p.path).name: p.reason for p in ds.problems}
    assert reasons["missing.png"] == "file not found"
    assert reasons["v0.png"].startswith("listed twice")
    # a bare path to a .csv is read as a CSV
    assert load_dataset(str(lst)).paths == ds.paths


def test_csv_bad_columns(tmp_cache, tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("file,label\na.jpg,1\n")
    with pytest.raises(DatasetError, match="path.*group"):
        load_dataset(f"csv:{f}")
    f.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(f"csv:{f}")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


def test_missing_and_empty_give_dataset_error(tmp_cache, tmp_path):
    for kind in ("holidays", "folder"):
        with pytest.raises(DatasetError, match="not found") as err:
            load_dataset(f"{kind}:{tmp_path / 'does-not-exist'}")
        assert "does-not-exist" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    for kind in ("holidays", "folder"):
        with pytest.raises(DatasetError, match="No usable images"):
            load_dataset(f"{kind}:{empty}")
    # only bad files: still an error, saying what was skipped
    bad = tmp_path / "onlybad"
    bad.mkdir()
    (bad / "100000.jpg").write_bytes(b"")
    (bad / "100100.jpg").write_text("nope")
    with pytest.raises(DatasetError, match="zero-byte file") as err:
        load_dataset(f"holidays:{bad}")
    assert "2 file(s) were skipped" in str(err.value)
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(DatasetError, match="Not a folder"):
        load_dataset(f"folder:{f}")
    with pytest.raises(DatasetError):
        load_dataset("folder:")


def test_parse_spec_and_kinds(tmp_path):
    assert set(DATASET_KINDS) == {"holidays", "folder", "csv", "demo"}
    for kind, (loader, description, example) in DATASET_KINDS.items():
        assert callable(loader) and description and parse_spec(example)[0] == kind
    assert parse_spec("demo") == ("demo", "")
    assert parse_spec("holidays:/x/y") == ("holidays", "/x/y")
    assert parse_spec("CSV:/x/l.csv") == ("csv", "/x/l.csv")
    with pytest.raises(DatasetError, match="Unknown dataset spec"):
        parse_spec("zip:/x.zip")
    with pytest.raises(DatasetError):
        load_dataset("nonsense")
    make_holidays(tmp_path / "h", [1])
    make_folder(tmp_path / "f", [1])
    assert parse_spec(str(tmp_path / "h")) == ("holidays", str(tmp_path / "h"))
    assert parse_spec(str(tmp_path / "f")) == ("folder", str(tmp_path / "f"))


def test_fingerprint_stable_and_sensitive(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    paths = make_holidays(d, [2, 3])
    a = load_dataset(f"holidays:{d}")
    b = load_dataset(f"holidays:{d}")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 32
    # a copy elsewhere has the same content, hence the same fingerprint
    c_dir = tmp_path / "copy"
    c_dir.mkdir()
    for p in paths:
        (c_dir / p.name).write_bytes(p.read_bytes())
    assert load_dataset(f"holidays:{c_dir}").fingerprint == a.fingerprint
    # changing one file's content changes it
    scene_image(7, 1).save(paths[1], "JPEG", quality=90)
    c = load_dataset(f"holidays:{d}")
    assert c.fingerprint != a.fingerprint and c.digests[1] != a.digests[1] and c.digests[0] == a.digests[0]
    # so does moving a file to another group
    os.rename(paths[0], d / "100205.jpg")
    assert load_dataset(f"holidays:{d}").fingerprint != c.fingerprint


def test_memo_is_used_and_keyed_by_stat(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    paths = make_holidays(d, [2, 2])
    first = load_dataset(f"holidays:{d}")
    db = tmp_cache / "datasets" / "files.sqlite"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 4
    # same size and mtime, different bytes: the memo is trusted (not re-read)
    st = paths[2].stat()
    paths[2].write_bytes(b"x" * st.st_size)
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_dataset(f"holidays:{d}").digests == first.digests
    # a new mtime: re-read, re-validated, now reported
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    ds = load_dataset(f"holidays:{d}")
    assert ds.n_images == 3 and [p.reason for p in ds.problems] == ["not an image"]


def test_warm_reload_is_fast(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    make_holidays(d, [3] * 200, size=(24, 16))
    load_dataset(f"holidays:{d}")
    t = time.perf_counter()
    ds = load_dataset(f"holidays:{d}")
    assert ds.n_images == 600
    assert time.perf_counter() - t < 0.5


def test_memo_survives_corrupt_database(tmp_cache, tmp_path):
    d = tmp_path / "hol"
    make_holidays(d, [2])
    (tmp_cache / "datasets").mkdir(parents=True, exist_ok=True)
    (tmp_cache / "datasets" / "files.sqlite").write_bytes(b"garbage" * 100)
    assert load_dataset(f"holidays:{d}").n_images == 2


def test_conftest_fixtures(tmp_cache, make_holidays, make_folder, holidays_dir, tmp_path):
    assert os.environ["SIMLAB_CACHE"] == str(tmp_cache)
    ds = load_dataset(f"holidays:{holidays_dir}")
    assert ds.n_images == 15 and ds.n_groups == 6 and ds.problems == []
    # views of one group look alike, groups look different
    a = [np.asarray(open_rgb(p), dtype=float) for p in ds.paths[:2]]
    b = np.asarray(open_rgb(ds.paths[3]), dtype=float)
    assert np.abs(a[0] - a[1]).mean() < np.abs(a[0] - b).mean()
    make_folder(tmp_path / "f", [2])
    assert load_dataset(f"folder:{tmp_path / 'f'}").n_images == 2
    assert make_holidays(tmp_path / "h2", [1])[0].name == "100000.jpg"
