"""One request, one key: a job's params with their paths resolved before the job is looked up or recorded.

``folder:X/``, ``folder:X`` and ``folder:./X`` name one dataset, so they are one request and one job (the
store keys a job by its params as canonical JSON); a search's query file is made absolute too, which also
keeps a relative path right in the worker, whose working folder is the repository.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from simlab.data import canonical_spec

#: Params that name one file, resolved to an absolute path.
FILE_PARAMS = ("query",)


def request_params(params: dict | None) -> dict:
    """``params`` with the dataset spec in its canonical form and file paths absolute (a copy)."""
    params = dict(params or {})
    if isinstance(params.get("dataset"), str) and params["dataset"].strip():
        params["dataset"] = canonical_spec(params["dataset"])
    for name in FILE_PARAMS:
        value = params.get(name)
        if isinstance(value, str) and value.strip():
            with contextlib.suppress(OSError, RuntimeError, ValueError):  # the job says what is wrong with it
                params[name] = str(Path(value.strip()).expanduser().resolve())
    return params
