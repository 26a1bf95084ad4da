"""Persistent compilation caches, framework-free: where one goes and what it did for a trainer.

JAX's and Numba's support modules both use these, so the two caches are chosen by
one rule and reported with the same keys (``runtime_info``), which the bench's
cold and warm start-up measurements check.
"""

from __future__ import annotations

import os
from pathlib import Path


def choose_directory(
    env_var: str, default: Path, default_by: str = "fmbench default"
) -> tuple[Path | None, str]:
    """``$env_var`` when set (set but empty: no cache), else ``default``; and who chose it."""
    env = os.environ.get(env_var)
    if env is not None and not env.strip():
        return None, f"${env_var}"
    if env:
        return Path(env).expanduser(), f"${env_var}"
    return default, default_by


def cache_use(cache_dir: str | None, hits: int, misses: int) -> dict[str, object]:
    """A trainer's cache hits and misses, and whether the cache was warm.

    Warm: every compilation was served from the cache; cold: any was compiled;
    None: no cache, or nothing was looked up (compiled earlier in this process).
    """
    warm = None if cache_dir is None or hits + misses == 0 else misses == 0
    return {
        "compilation_cache_hits": hits,
        "compilation_cache_misses": misses,
        "compilation_cache_warm": warm,
    }
