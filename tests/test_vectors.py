import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

from helpers import pid_after, write_group_folder
from simlab.data import load_dataset
from simlab.data.images import load_many
from simlab.vectors import VectorCache, cached_sets, compute_vectors, decode, decode_mode, vectorize

BACKBONE = "efficientnet_lite0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_miss_then_hit_then_incremental(tmp_path, cache):
    root = write_group_folder(tmp_path / "ds", n_groups=6, per_group=2)
    ds = load_dataset(f"folder:{root}")
    seen = []
    first = vectorize(ds, BACKBONE, "random", progress=lambda *a, **fields: seen.append(a))
    assert first.vectors.shape == (12, 1280) and first.vectors.dtype == np.float32
    assert first.computed == 12 and seen[-1][0] == 12
    assert np.isfinite(first.vectors).all()

    again = vectorize(load_dataset(f"folder:{root}"), BACKBONE, "random")
    assert again.computed == 0
    np.testing.assert_array_equal(again.vectors, first.vectors)

    write_group_folder(tmp_path / "more", n_groups=2, per_group=2, seed=9)
    shutil.copytree(tmp_path / "more" / "g000", root / "new_group")
    grown = vectorize(load_dataset(f"folder:{root}"), BACKBONE, "random")
    assert grown.computed == 2 and len(grown.paths) == 14
    old = {p: v for p, v in zip(first.paths, first.vectors)}
    for p, v in zip(grown.paths, grown.vectors):
        if p in old:
            np.testing.assert_allclose(v, old[p], rtol=1e-5, atol=1e-5)
    assert len(cached_sets()) == 2


def test_decoding_processes_give_the_threads_vectors_and_errors(tmp_path, cache, monkeypatch):
    main = unguarded_main(tmp_path, monkeypatch)  # in view when the workers start
    if decode._process_pool.cache_info().currsize:
        decode._process_pool().terminate()
    decode._process_pool.cache_clear()
    root = write_group_folder(tmp_path / "ds", n_groups=5, per_group=2)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    paths = sorted(str(p) for p in root.rglob("*.jpg")) + [str(tmp_path / "bad.jpg"), str(tmp_path / "gone.jpg")]
    out = {}
    for mode in ("threads", "processes"):
        monkeypatch.setenv("SIMLAB_DECODE", mode)
        assert decode_mode() == mode
        out[mode] = compute_vectors(paths, BACKBONE, "random", batch_size=4)  # 3 batches, the last one padded
    np.testing.assert_array_equal(out["processes"][0], out["threads"][0])
    assert out["processes"][1] == out["threads"][1]
    errors = out["threads"][1]
    assert errors[:-2] == [""] * 10 and "not an image" in errors[-2] and "not found" in errors[-1]
    assert np.abs(out["threads"][0][:10]).sum(axis=1).min() > 0
    assert sys.modules["__main__"] is main


def test_weights_and_fit_key_the_cache(tmp_path, cache):
    ds = load_dataset(f"folder:{write_group_folder(tmp_path / 'ds', 3, 2)}")
    a = vectorize(ds, BACKBONE, "random", fit="crop")
    b = vectorize(ds, BACKBONE, "random", fit="pad")
    assert a.key != b.key and b.computed == 6


def test_a_corrupt_cache_file_is_recomputed_not_fatal(tmp_path, cache):
    ds = load_dataset(f"folder:{write_group_folder(tmp_path / 'ds', 3, 2)}")
    first = vectorize(ds, BACKBONE, "random")
    target = next(cache.glob("vectors/*/*.npz"))
    target.write_bytes(target.read_bytes()[:100])  # as if torn by a crash without atomic writes
    again = vectorize(ds, BACKBONE, "random")
    assert again.computed == 6
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-5, atol=1e-5)


def test_a_killed_vectorisation_leaves_the_cache_readable(tmp_path, cache):
    root = write_group_folder(tmp_path / "ds", n_groups=40, per_group=3, size=160)
    ds = load_dataset(f"folder:{root}")
    done = vectorize(load_dataset(f"folder:{write_group_folder(tmp_path / 'small', 3, 2)}"), BACKBONE, "random")
    code = ("import sys; from simlab.data import load_dataset; from simlab.vectors import vectorize\n"
            f"vectorize(load_dataset({f'folder:{root}'!r}), {BACKBONE!r}, 'random',"
            " progress=lambda d, t, message, **fields: print(d, flush=True))")
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip()  # the first batch is through: kill it mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not list(cache.glob(f"vectors/*/{ds.fingerprint}.npz"))  # nothing half-written under its name
    hit = vectorize(load_dataset(f"folder:{tmp_path / 'small'}"), BACKBONE, "random")
    assert hit.computed == 0
    np.testing.assert_array_equal(hit.vectors, done.vectors)
    kept = VectorCache(BACKBONE, "random").parts(ds.fingerprint).digests  # the finished batches, kept
    full = vectorize(ds, BACKBONE, "random")
    assert full.computed == 120 - len(kept)


def test_npz_export(tmp_path, cache):
    ds = load_dataset(f"folder:{write_group_folder(tmp_path / 'ds', 3, 2)}")
    out = vectorize(ds, BACKBONE, "random").save_npz(tmp_path / "v.npz")
    with np.load(out) as z:
        assert z["vectors"].shape == (6, 1280) and z["vectors"].dtype == np.float32
        assert list(z["paths"]) == ds.paths and list(z["groups"]) == ds.groups


def test_the_jax_backend_gives_the_tensorflow_vectors(tmp_path, cache):
    """The forward pass is compiled for the Keras backend in use: under JAX (jax.jit over the
    model's stateless call) the bundled backbone gives TensorFlow's vectors."""
    root = write_group_folder(tmp_path / "ds", n_groups=3, per_group=2)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    expected, errors = compute_vectors(paths, BACKBONE, "imagenet")
    assert not any(errors)
    code = ("import sys, keras, numpy as np; from simlab.vectors import compute_vectors; "
            f"v, e = compute_vectors({paths!r}, {BACKBONE!r}, 'imagenet'); assert not any(e), e; "
            "np.save(sys.argv[1], v); print(keras.config.backend())")
    out = tmp_path / "jax.npy"
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=600,
                         env=os.environ | {"KERAS_BACKEND": "jax", "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-1] == "jax"
    np.testing.assert_allclose(np.load(out), expected, atol=1e-4 * np.abs(expected).max())


def unguarded_main(tmp_path, monkeypatch) -> types.ModuleType:
    """Make ``__main__`` a script that must never run again (spawn re-imports the parent's main)."""
    script = tmp_path / "unguarded_main.py"
    script.write_text("raise SystemExit('the main module ran in a decoding worker')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_a_decoding_process_that_dies_is_reported_and_replaced(tmp_path, monkeypatch):
    pool = decode._process_pool()
    unguarded_main(tmp_path, monkeypatch)  # also in view when the pool starts the replacement
    lost = pool.apply_async(os._exit, (3,))  # the worker dies with the task, as on a decoder crash
    with pytest.raises(RuntimeError, match="gave no answer"):
        decode._get(lost, timeout=5)
    # the pool replaces the dead worker: as many workers as before answer at once
    workers = decode.decode_workers()
    pids = {decode._get(r, timeout=120) for r in [pool.apply_async(pid_after, (2.0,)) for _ in range(workers)]}
    assert len(pids) == workers
    (image, error), = decode._get(pool.apply_async(load_many, ([str(tmp_path / "gone.jpg")], 32)), timeout=120)
    assert image is None and "not found" in error
