import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import simlab.finetune  # noqa: F401  (registers the siamese-<run id> scheme, as the CLI, jobs and pages do)
from simlab import options
from simlab.backbones import get_backbone, keras_apps, list_backbones, register_scheme, weights_status


def test_registry_lists_the_study_backbones_with_their_sizes():
    sizes = {b.name: (b.input_size, b.dim) for b in list_backbones()}
    assert list_backbones()[0].name == "efficientnet_lite0"
    assert sizes["vgg16"] == (224, 512) and sizes["vgg16_fc2"] == (224, 4096)
    assert sizes["resnet50"] == (224, 2048)
    assert sizes["inceptionv3"] == (299, 2048) and sizes["xception"] == (299, 2048)


def test_weights_status(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    assert weights_status("efficientnet_lite0") == "bundled"
    assert weights_status("resnet50") == "download"
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / get_backbone("resnet50").weights_file).write_bytes(b"x")
    assert weights_status("resnet50") == "cached"


def test_offline_download_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(keras_apps, "_ORIGIN", "http://127.0.0.1:9/{module}/{file}")  # nothing listens there
    with pytest.raises(keras_apps.WeightsUnavailable) as err:
        get_backbone("resnet50").build("imagenet")
    message = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "weights") in message and "efficientnet_lite0" in message


def test_a_keras_application_vectorises_with_its_own_preprocessing():
    bb = get_backbone("resnet50")
    model = bb.build("random")
    images = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3)).astype("float32")
    out = np.asarray(model(bb.preprocess(images)))
    assert out.shape == (2, 2048) and np.isfinite(out).all()


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_backbone("alexnet")


def write_tower(cache, run_id: str, dim: int = 16) -> None:
    folder = cache / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "tower.json").write_text(json.dumps({
        "run_id": run_id, "base": "small-cnn", "base_weights": "random", "input_size": 32, "dim": dim,
        "preprocess": "unit", "loss": "triplet", "created": 0.0}))


def test_trained_towers_resolve_by_name_from_the_current_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    write_tower(tmp_path, "f1")
    bb = get_backbone("siamese-f1")
    assert (bb.input_size, bb.dim, bb.bundled, bb.options["tuned"]) == (32, 16, True, True)
    assert "siamese-f1" in [b.name for b in list_backbones()] and weights_status("siamese-f1") == "bundled"
    np.testing.assert_allclose(bb.preprocess(np.float32(255)), 1.0)
    (tmp_path / "runs" / "f2").mkdir()
    (tmp_path / "runs" / "f2" / "tower.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        assert "siamese-f2" not in [b.name for b in list_backbones()]
    assert "f2" in caplog.text
    for name in ("siamese-f2", "siamese-f3", "siamese-../f1", "siamese-"):
        with pytest.raises(ValueError, match="Unknown backbone"):
            get_backbone(name)
    shutil.rmtree(tmp_path / "runs" / "f1")  # deleted, or another cache: gone from the registry
    with pytest.raises(ValueError, match="Unknown backbone"):
        get_backbone("siamese-f1")
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "other"))
    assert not [b for b in list_backbones() if b.options.get("tuned")]


def test_the_registry_imports_none_of_its_users():
    import simlab.backbones as registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("simlab.") and m != "simlab.paths"}
    named = [f.name for f in Path(registry.__file__).parent.glob("*.py") if "simlab.finetune" in f.read_text()]
    assert not named  # not even as a dotted path imported at run time


def run_fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          check=True, cwd=Path(__file__).resolve().parent.parent).stdout.strip()


def test_towers_resolve_once_their_layer_is_imported_and_every_entry_point_imports_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    write_tower(tmp_path, "f1")
    resolve = ("from simlab.backbones import get_backbone\n"
               "try:\n    print(get_backbone('siamese-f1').dim)\nexcept ValueError as e:\n    print(str(e)[:29])")
    assert run_fresh(resolve) == "Unknown backbone 'siamese-f1'"  # the registry alone knows no towers
    for entry in ("simlab.finetune", "simlab.finetune.towers", "simlab.cli", "simlab.jobs.kinds", "pages._ui"):
        assert run_fresh(f"import {entry}\n{resolve}") == "16", entry


def test_a_scheme_routes_names_by_the_longest_prefix(monkeypatch):
    import simlab.backbones as registry

    monkeypatch.setattr(registry, "SCHEMES", dict(registry.SCHEMES))
    lite0 = get_backbone("efficientnet_lite0")
    register_scheme("x-", lambda name: None)
    register_scheme("x-y-", lambda name: lite0 if name == "x-y-1" else None, lambda: [lite0])
    assert get_backbone("x-y-1") is lite0
    with pytest.raises(ValueError, match="Unknown backbone 'x-y-2'"):
        get_backbone("x-y-2")
    with pytest.raises(ValueError, match="Unknown backbone 'x-1'"):
        get_backbone("x-1")
    assert [b.name for b in list_backbones()].count("efficientnet_lite0") == 1  # a registered name listed once
    with pytest.raises(ValueError, match="prefix"):
        register_scheme("", lambda name: None)


def test_backbone_names_are_the_choices_of_option_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    assert options.validate("backbone", "efficientnet_lite0") == "efficientnet_lite0"
    assert options.validate("backbones", ["vgg16", "inceptionv3"]) == ["vgg16", "inceptionv3"]
    with pytest.raises(ValueError, match="backbone must be one of efficientnet_lite0.*, not 'alexnet'"):
        options.validate("backbone", "alexnet")
    write_tower(tmp_path, "f1")  # towers trained here are choices too, while the current cache holds them
    assert options.validate("backbone", "siamese-f1") == "siamese-f1"
    names = [b.name for b in list_backbones()]
    assert options.widget_options("backbone")["options"] == names
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", **options.argparse_kwargs("backbone"))
    assert parser.parse_args(["--backbone", "siamese-f1"]).backbone == "siamese-f1"
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parser.parse_args(["--backbone", "alexnet"])


def test_listing_backbones_loads_no_keras():
    code = ("import sys; from simlab.backbones import get_backbone, list_backbones; list_backbones(); "
            "get_backbone('resnet50'); "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
