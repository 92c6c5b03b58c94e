"""Free space where models are cached (vLLM's Hugging Face cache): a download that fills the
disk fails half way, and a full /var also stops journald and podman."""

from __future__ import annotations

import os

from liminati.checks.model import Check, fail, ok, warn
from liminati.executor import Executor
from liminati.layout import Layout

NAME = "disk"
GIB = 1024**3
#: below this, a second 7-8B model (about 15 GiB in bf16) no longer fits: warn
WARN_BELOW = 20 * GIB
#: below this, even a small model or a vLLM image update may not fit: fail
FAIL_BELOW = 5 * GIB


def judge_free(path: str, free: int, total: int) -> Check:
    detail = f"{free / GIB:.1f} GiB free of {total / GIB:.0f} GiB at {path}"
    hint = (
        "free space on that file system: old models in the cache "
        "(`huggingface-cli delete-cache` as the vLLM user), unused images (`podman image prune`)"
    )
    if free < FAIL_BELOW:
        return fail(NAME, f"{detail} (under {FAIL_BELOW // GIB} GiB)", hint)
    if free < WARN_BELOW:
        return warn(NAME, f"{detail} (under {WARN_BELOW // GIB} GiB)", hint)
    return ok(NAME, detail)


def check_disk(executor: Executor, layout: Layout) -> Check:
    path = layout.hf_cache
    try:
        # read-only: statvfs changes nothing, so it needs no executor method
        st = os.statvfs(executor.host_path(path))
    except FileNotFoundError:
        return fail(
            NAME, f"the model cache {path} does not exist", "`sudo liminati install` creates it"
        )
    except OSError as exc:
        return fail(NAME, f"{path}: {exc.strerror}", "run doctor as root")
    return judge_free(str(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
