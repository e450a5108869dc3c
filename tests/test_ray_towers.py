"""A trained tower (``siamese-<run id>``) vectorised on Ray: its name is resolved in the worker too.

The backbone registry knows towers only through the scheme :mod:`simlab.finetune` registers when it is
imported; a fresh Ray worker has imported nothing, so the driver hands it the modules of its schemes.
Real parts: a local Ray instance (2 CPUs), a real saved Keras tower, real JPEG files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import simlab_cache_at, write_group_folder

ray = pytest.importorskip("ray")


def save_tower(cache, run_id: str, size: int = 32, dim: int = 8) -> str:
    """A small real tower as fine-tuning saves one: tower.keras and tower.json under cache/runs/<id>/."""
    import keras

    folder = cache / "runs" / run_id
    folder.mkdir(parents=True)
    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(dim, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=0))(images)
    model = keras.Model(images, keras.layers.GlobalAveragePooling2D()(x))
    model.save(folder / "tower.keras")
    (folder / "tower.json").write_text(json.dumps({
        "run_id": run_id, "base": "small-cnn", "base_weights": "random", "input_size": size, "dim": dim,
        "preprocess": "unit", "loss": "triplet", "created": 0.0}))
    return f"siamese-{run_id}"


def test_a_tower_vectorises_on_ray_as_in_process(tmp_path_factory):
    import simlab.finetune  # noqa: F401  (the driver knows towers, as the CLI and the job worker do)
    from simlab.backbones import scheme_modules
    from simlab.distributed import connect
    from simlab.vectors import compute_vectors
    from simlab.vectors.ray import ray_vectorize

    assert "simlab.finetune.towers" in scheme_modules()
    cache = tmp_path_factory.mktemp("cache")
    root = write_group_folder(tmp_path_factory.mktemp("ds"), n_groups=2, per_group=2, size=48, seed=2)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    with simlab_cache_at(cache):
        name = save_tower(cache, "r1")
        reference, _ = compute_vectors(paths, name, "random", batch_size=4)
        connect("local", num_cpus=2)
        try:
            vectors, errors = ray_vectorize(paths, name, "random", address="local", batch_size=4,
                                            shard_dir=str(tmp_path_factory.mktemp("shards")))
        finally:
            ray.shutdown()
    assert not any(errors)
    np.testing.assert_allclose(vectors, reference, rtol=1e-4, atol=1e-5)
