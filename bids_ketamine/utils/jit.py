"""Numba compilation of the numerical kernels, with a pure-NumPy fallback where it is missing."""

from __future__ import annotations

__all__ = ["HAVE_NUMBA", "compile_kernel"]

try:  # a dependency; the fallback keeps the package usable where it cannot be installed
    from numba import njit
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True


def compile_kernel(function):
    """``numba.njit(nogil=True)`` (the caller's threads run kernels in parallel), cached on disk
    when Numba finds a writable cache folder (set ``NUMBA_CACHE_DIR`` in read-only installations),
    compiled at first use in each process otherwise."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # no cache locator: read-only package folder and home
        return njit(nogil=True)(function)
