"""What hardware simlab runs on: one place decides GPU or CPU."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[str, ...]:
    """Names of the GPUs the Keras backend sees (empty on a CPU-only machine)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return ()
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return tuple(d.device_kind for d in jax.devices() if d.platform == "gpu")
    if backend == "torch":
        import torch

        return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    import tensorflow as tf

    names = []
    for dev in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(dev)
        names.append(details.get("device_name", dev.name))
    return tuple(names)


def has_gpu() -> bool:
    return bool(gpus())


def describe() -> str:
    """A short badge text: the GPU's name, or the CPU core count."""
    found = gpus()
    return f"GPU: {found[0]}" if found else f"CPU ({os.cpu_count()} cores)"
