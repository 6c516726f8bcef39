"""A restricted unpickler for TALENT's object-dtype ``.npy`` files: arrays of str, int, float, bool and None, nothing else."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

#: The only globals an object-array pickle may name: how numpy rebuilds an array, a dtype
#: and a numpy scalar. Files written by numpy 1.x name ``numpy.core``, by 2.x ``numpy._core``.
_PICKLE_ALLOWED = {
    **{(module, "_reconstruct"): _multiarray._reconstruct for module in ("numpy.core.multiarray",
                                                                         "numpy._core.multiarray")},
    **{(module, "scalar"): _multiarray.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
#: Element types an object array may hold (what TALENT's categorical and label columns hold; pandas
#: leaves None for some missing strings). None is pickled as an opcode, not a global.
_PLAIN_ELEMENTS = (str, bool, int, float, np.str_, np.bool_, np.integer, np.floating, type(None))


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays of plain values and nothing else.

    Every callable a pickle can invoke comes from :meth:`find_class` (there is no
    persistent-id hook), so refusing a name there refuses the call before it runs.
    """

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _load_object_npy(path: Path, *, text: bool = False) -> np.ndarray:
    """Read an object-dtype ``.npy`` (``np.save(..., allow_pickle=True)``) without running its pickle freely.

    The array is rebuilt by :class:`_ArrayOnlyUnpickler`; its elements must be
    str, int, float, bool or None. With ``text`` (categorical columns) every element becomes
    its ``str``, as TALENT's ``astype(str)`` makes it: None is the category "None", 2 is "2"
    and 2.0 is "2.0", a float NaN is "nan" (a missing value). Otherwise all numbers give a
    float64 array and any string a str array. None among numbers is NaN there, as numpy casts it,
    so a numerical file's None is filled like a NaN (TALENT's ``np.nanmean`` raises on such a file).
    """
    refuse = dict(fix="save it as a plain array, e.g. np.save(path, arr.astype(str))")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path} is an object array in .npy format {version}, which is not read",
                            **refuse)
        if not dtype.hasobject:
            raise DataError(f"{path} is not a readable .npy file", fix="save it with numpy.save")
        try:
            arr = _ArrayOnlyUnpickler(f).load()
        except _RefusedGlobal as e:
            raise DataError(f"{path} holds a pickle that names {e}, which is not loaded for safety "
                            "(only arrays of str, int, float, bool and None are)", **refuse) from None
        except Exception as e:  # a malformed pickle fails in many ways
            raise DataError(f"{path} holds an unreadable pickle ({type(e).__name__})", **refuse) from None
    if type(arr) is not np.ndarray or arr.shape != tuple(shape) or arr.dtype != object:
        raise DataError(f"{path} does not hold the object array its header declares", **refuse)
    flat = arr.ravel()
    odd = next((v for v in flat if not isinstance(v, _PLAIN_ELEMENTS)), None)
    if odd is not None:
        raise DataError(f"{path} holds a {type(odd).__name__} element; only str, int, float, bool and None are "
                        "loaded", **refuse)
    if not text and flat.size and not any(isinstance(v, (str, np.str_)) for v in flat):
        return arr.astype(np.float64)
    return arr.astype(str)
