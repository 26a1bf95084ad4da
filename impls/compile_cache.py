"""Persistent compilation caches, framework-free: where one goes and what it did for a trainer.

JAX's, Numba's and torch.compile's support modules all use these, so their caches are
chosen by one rule and reported with the same keys (``runtime_info``), which the
bench's cold and warm start-up measurements check.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


class CompileLog:
    """One trainer's compilations: each one's seconds, the cache lookups they made and the
    cache they started from."""

    def __init__(self, cache: dict[str, object]) -> None:
        self._cache = cache
        self._seconds: dict[str, float] = {}
        self._hits = self._misses = 0

    def run(
        self,
        name: str,
        compile_now: Callable[[], object],
        lookups: Callable[[], tuple[int, int]],
    ) -> None:
        """Run ``compile_now``, which compiles (or loads from the cache), timed as ``name``;
        ``lookups`` gives the framework's cache hits and misses so far (counted before and
        after, so the difference is this compilation's)."""
        hits, misses = lookups()
        start = time.perf_counter()
        compile_now()
        self._seconds[name] = time.perf_counter() - start
        hits_after, misses_after = lookups()
        self._hits += hits_after - hits
        self._misses += misses_after - misses

    def info(self) -> dict[str, object]:
        """The cache and the compile times, for the trainer's ``runtime_info``."""
        return {
            **self._cache,
            **cache_use(self._cache["compilation_cache_dir"], self._hits, self._misses),
            "compile_seconds": round(sum(self._seconds.values()), 4),
            "compile_seconds_by_program": {k: round(v, 4) for k, v in self._seconds.items()},
        }
