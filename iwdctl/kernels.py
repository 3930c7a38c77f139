"""iwdctl's numba kernels: compiled once per signature into numba's on-disk cache, then loaded from it
without numba's compiler set-up.

Before each load from its cache, numba refreshes its target context: it imports and installs every
typing and lowering registry (about 0.3 s, a quarter of a one-pair `iwdctl measure` at 64 px), though
only compiling uses them. Loading compiled code needs numba's C helpers, installed when the context is
created, and its runtime (NRT), initialised here. A signature missing from the cache compiles as before:
numba's compiler refreshes the context itself.

iwdctl's kernels' object code references numba's runtime and C helpers, Python's C API and libc, nothing
else (`nm -u` on the cache files). Loading also imports the modules that the code's environments name,
and those install what they define: a scratch kernel with a dict of strings, whose code references the
hash secret of `numba.cpython.hashing`, loaded and ran this way. Calling a NumPy method on an array in a
kernel (`a.min()`, `a.sum()`) makes loading it import `numba.np.arraymath`, which imports SciPy's linear
algebra (another 0.15 s): the kernels write such reductions as loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import numba
    from numba.core.caching import FunctionCache
    from numba.core.runtime import rtsys
except ImportError:  # pragma: no cover - exercised where numba is absent (see tests/test_iwd.py)
    numba = None


if numba is not None:

    class _DirectlyLoadedCache(FunctionCache):
        """numba's disk cache of one kernel, loaded without refreshing the target context first."""

        def load_overload(self, sig, target_context):  # type: ignore[no-untyped-def]
            rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)

    # Private parts of numba's cache (checked on 0.68): a numba without them loads its own way.
    _LOADS_DIRECTLY = all(
        hasattr(FunctionCache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")
    )


def kernel(function: Callable[..., Any]) -> Any:
    """`function` compiled by numba (nopython, releasing the GIL, cached on disk), or None without numba."""
    if numba is None:
        return None
    compiled = numba.njit(nogil=True, cache=True)(function)
    if _LOADS_DIRECTLY:
        compiled._cache = _DirectlyLoadedCache(function)
    return compiled
