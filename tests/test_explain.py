"""Similarity maps (simlab.explain and ``python -m simlab explain``): the contributions of each image's locations
sum exactly to the pair's cosine, for every bundled backbone that has a map; the others say so in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


pytestmark = pytest.mark.usefixtures("module_cache")  # one SIMLAB_CACHE for the module (conftest)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two real photos as JPEG files (one landscape, one portrait) and a crop of the first."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    coffee = Image.fromarray(skimage.data.coffee())  # 600 x 400
    portrait = Image.fromarray(skimage.data.astronaut()).crop((100, 0, 400, 512))  # 300 x 512
    paths = {"coffee": folder / "coffee.jpg", "portrait": folder / "portrait.png", "crop": folder / "crop.jpg"}
    coffee.save(paths["coffee"], quality=92)
    portrait.save(paths["portrait"])
    coffee.crop((150, 100, 450, 300)).save(paths["crop"], quality=92)
    return {k: str(v) for k, v in paths.items()}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from simlab.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backbone", [*LITE, "dhash"])
def test_contributions_sum_exactly_to_the_cosine(backbone, photos):
    from simlab.explain import explain_pair

    e = explain_pair(photos["coffee"], photos["portrait"], backbone, "random")
    assert e.exact
    assert abs(float(e.grid_a.sum()) - e.score) < 1e-9
    assert abs(float(e.grid_b.sum()) - e.score) < 1e-9
    # the maps are per pixel of each image, and carry the same score
    assert e.map_a.shape == (400, 600) and e.map_b.shape == (512, 300)
    assert e.map_a.dtype == np.float32
    assert abs(float(e.map_a.sum(dtype=np.float64)) - e.score) < 1e-3
    assert abs(float(e.map_b.sum(dtype=np.float64)) - e.score) < 1e-3
    # outside the centre square the model saw, nothing
    left, top, right, bottom = e.seen_a
    assert (left, top, right, bottom) == (100, 0, 500, 400)
    assert not e.map_a[:, :left].any() and not e.map_a[:, right:].any()


@pytest.mark.parametrize("backbone", LITE)
def test_score_is_the_cosine_simlab_uses(backbone, photos):
    """The score explained is the cosine of the vectors the vector cache computes (batch norms folded there)."""
    from simlab.backbones import get_backbone
    from simlab.explain import explain_pair
    from simlab.vectors.embed import compute_vectors

    e = explain_pair(photos["coffee"], photos["crop"], backbone, "random", detail="native")
    vectors, errors = compute_vectors([photos["coffee"], photos["crop"]], backbone, "random")
    assert errors == ["", ""]
    a, b = vectors
    assert abs(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) - e.score) < 1e-4
    h = -(-get_backbone(backbone).input_size // 32)  # "same" padding: 224 -> 7, 240 -> 8, 260 -> 9
    assert e.grid_a.shape == (h, h)


def test_matches_are_mutual_and_carry_their_share(photos):
    from simlab.explain import explain_pair

    e = explain_pair(photos["coffee"], photos["crop"], "efficientnet_lite0", "random", detail="native")
    assert 1 <= len(e.matches) <= 5
    assert len({m.a for m in e.matches}) == len(e.matches) == len({m.b for m in e.matches})
    for m in e.matches:
        assert m.share == pytest.approx((e.grid_a[m.a] + e.grid_b[m.b]) / 2 / e.score)
    assert e.matched_share == pytest.approx(sum(m.share for m in e.matches))
    assert [m.share for m in e.matches] == sorted((m.share for m in e.matches), reverse=True)


def test_sharper_maps_keep_the_grid_and_the_sum(photos):
    from simlab.explain import explain_pair

    native = explain_pair(photos["coffee"], photos["crop"], "efficientnet_lite0", "random", detail="native")
    views = explain_pair(photos["coffee"], photos["crop"], "efficientnet_lite0", "random", detail="views")
    np.testing.assert_allclose(views.grid_a, native.grid_a, rtol=1e-6)
    assert views.score == pytest.approx(native.score)
    assert abs(float(views.map_a.sum(dtype=np.float64)) - views.score) < 1e-3
    assert not np.allclose(views.map_a, native.map_a)


def test_backbones_declare_how_they_are_explained():
    from simlab.explain import can_explain, explain_kind

    assert [explain_kind(b) for b in (*LITE, "phash", "dhash")] == ["pooled"] * 3 + ["bits", "bit_grid"]
    assert explain_kind("resnet50") == "pooled" and explain_kind("vgg16_fc2") == ""
    assert explain_kind("dinov2_small") == "tokens" and not can_explain("siglip2_b16")
    assert not can_explain("phash")


def test_phash_has_no_map_one_line(photos, capsys, tmp_path):
    code, out, err = run_cli(["explain", photos["coffee"], photos["crop"], "--backbone", "phash",
                              "--out", str(tmp_path / "m.npz")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: phash has no spatial map")
    assert not (tmp_path / "m.npz").exists()


def test_cli_writes_the_maps_and_the_picture(photos, capsys, tmp_path):
    out_npz, png = tmp_path / "maps.npz", tmp_path / "overlay.png"
    code, out, err = run_cli(["explain", photos["coffee"], photos["portrait"], "--weights", "random",
                              "--out", str(out_npz), "--png", str(png), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    with np.load(out_npz) as z:
        assert {"grid_a", "grid_b", "map_a", "map_b", "score"} <= set(z.files)
        assert z["map_a"].dtype == np.float32 and z["map_a"].shape == (400, 600)
        assert z["map_b"].dtype == np.float32 and z["map_b"].shape == (512, 300)
        score = float(z["score"])
        assert abs(float(z["grid_a"].sum()) - score) < 1e-9 and abs(float(z["grid_b"].sum()) - score) < 1e-9
    assert summary["score"] == pytest.approx(score, abs=1e-6) and summary["exact"] is True
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > im.height > 0
        assert len(set(im.convert("RGB").getdata())) > 100  # a picture, not a blank canvas


def test_cli_unreadable_image_is_one_line(photos, capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code, out, err = run_cli(["explain", photos["coffee"], str(bad), "--weights", "random",
                              "--out", str(tmp_path / "m.npz")], capsys)
    assert code == 2 and err.count("\n") == 1 and "not an image" in err


def test_explanations_are_kept_on_disk_by_the_images_digests(photos, module_cache, tmp_path):
    import shutil

    from simlab.explain import explain_cached, heat_overlay, match_overlay

    first = explain_cached(photos["coffee"], photos["crop"], "efficientnet_lite0", "random")
    stored = list((module_cache / "explain").glob("*.npz"))
    assert len(stored) == 1
    again = explain_cached(photos["coffee"], photos["crop"], "efficientnet_lite0", "random")
    assert again.score == first.score and again.matches == first.matches
    np.testing.assert_array_equal(again.map_a, first.map_a)
    copy = tmp_path / "same_content.jpg"  # the key is the content, not the path
    shutil.copyfile(photos["coffee"], copy)
    explain_cached(str(copy), photos["crop"], "efficientnet_lite0", "random")
    assert len(list((module_cache / "explain").glob("*.npz"))) == 1
    assert heat_overlay(photos["coffee"], first, "a", 320).size == (320, 213)
    assert match_overlay(photos["crop"], first, "b", 320).size == (300, 200)  # never enlarged


def test_a_vision_transformer_map_is_scaled_to_its_score(photos):
    """DINOv2's vector is its CLS token, not the patch tokens' mean: the map is said to be an approximation."""
    from simlab.explain import explain_pair

    e = explain_pair(photos["coffee"], photos["crop"], "dinov2_small", "random")
    assert e.kind == "tokens" and not e.exact and e.detail == "native"
    assert e.grid_a.shape == (16, 16)
    assert abs(float(e.grid_a.sum()) - e.score) < 1e-9 and abs(float(e.grid_b.sum()) - e.score) < 1e-9
