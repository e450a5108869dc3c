"""The decoder seam: which code turns image files into the uint8 batches the forward pass eats.

- ``pillow``: Pillow in a pool of threads or processes (:mod:`simlab.vectors.decode`), everywhere;
  the default without a GPU.
- ``nvimgcodec``: NVIDIA nvImageCodec (:mod:`simlab.vectors.nvimgcodec`) decodes batches of JPEGs
  on the GPU, resizes them there and hands them to the Keras backend through DLPack; the files it
  cannot take go to Pillow one by one. Needs ``requirements-gpu.txt`` and a GPU.

``$SIMLAB_DECODE`` forces one (``pillow`` or ``nvimgcodec``; ``threads`` and ``processes`` mean Pillow
in that pool); unset, nvimgcodec is chosen when it can run here, else Pillow.

Every decoder yields :class:`simlab.vectors.decode.Batch` objects from
``batches(paths, sizes, fit, batch_size)``, where ``sizes[i]`` are the sizes image ``i`` is wanted
at: each file is decoded once, whatever the number of backbones fed from it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from simlab.vectors.decode import POOL_MODES, Batch, pillow_batches

ENV = "SIMLAB_DECODE"


class DecoderUnavailable(ValueError):
    """A decoder was asked for by name where it cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class Decoder:
    name: str
    batches: Callable[..., Iterator[Batch]]  # (paths, sizes, fit, batch_size) -> Batch, in order
    unavailable: Callable[[], str]  # '' when it can run here, else why not (one line)
    on_device: bool  # its batches live on the accelerator

    def describe(self) -> str:
        """For people and benchmarks: ``pillow (2 threads)``, ``nvimgcodec (GPU)``."""
        if self.name == "pillow":
            from simlab.vectors.decode import decode_mode, decode_workers

            return f"pillow ({decode_workers()} {decode_mode()})"
        return f"{self.name} ({'GPU' if self.on_device else 'CPU'})"


def _nvimgcodec_batches(*args, **kwargs) -> Iterator[Batch]:
    from simlab.vectors.nvimgcodec import nvimgcodec_batches  # only where it is used

    return nvimgcodec_batches(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def nvimgcodec_unavailable() -> str:
    """Why nvImageCodec cannot decode here ('' when it can): the package, a GPU, a Keras backend."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.nvimgcodec") is None:
        return ("the nvImageCodec package is not installed (pip install -r requirements-gpu.txt: "
                "nvidia-nvimgcodec-cu13, or -cu12 for CUDA 12)")
    from simlab.device import has_gpu

    if not has_gpu():
        return "the Keras backend sees no GPU (nvImageCodec decodes on an NVIDIA GPU)"
    import keras

    if keras.config.backend() not in ("tensorflow", "jax", "torch"):
        return f"the Keras backend {keras.config.backend()!r} takes no DLPack arrays"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as exc:  # a wheel for another CUDA, a missing library
        return f"nvImageCodec does not load ({type(exc).__name__}: {exc})"
    return ""


DECODERS: dict[str, Decoder] = {
    "pillow": Decoder("pillow", pillow_batches, lambda: "", on_device=False),
    "nvimgcodec": Decoder("nvimgcodec", _nvimgcodec_batches, nvimgcodec_unavailable, on_device=True),
}


def preferred_decoder() -> str:
    """The name of the decoder :func:`choose_decoder` picks here, never raising (a decoder forced
    where it cannot run answers ``pillow``: the vectorisation itself then says what is wrong)."""
    try:
        return choose_decoder().name
    except DecoderUnavailable:
        return "pillow"


def choose_decoder(name: str | None = None) -> Decoder:
    """The decoder to use: ``name``, else ``$SIMLAB_DECODE``, else nvimgcodec where it can run and
    Pillow elsewhere. A decoder named where it cannot run raises :class:`DecoderUnavailable`."""
    asked = (name if name is not None else os.environ.get(ENV, "")).strip().lower()
    if asked in POOL_MODES:
        asked = "pillow"
    if not asked:
        return DECODERS["nvimgcodec"] if not DECODERS["nvimgcodec"].unavailable() else DECODERS["pillow"]
    if asked not in DECODERS:
        raise DecoderUnavailable(f"{ENV}={asked!r} is not a decoder: pick one of "
                                 f"{', '.join([*DECODERS, *POOL_MODES])} (or leave it unset).")
    decoder = DECODERS[asked]
    if why := decoder.unavailable():
        raise DecoderUnavailable(f"{ENV}={asked} cannot run here: {why}. Unset {ENV} (or set it to pillow) "
                                 "to decode with Pillow on the CPU.")
    return decoder
