"""Array-module selection: NumPy on CPU, CuPy on GPU, chosen by the data or the worker."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_module(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) of the first CuPy array among ``arrays``, else NumPy."""
    for arr in arrays:
        if type(arr).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def gpu_available() -> bool:
    """Whether CuPy is importable and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDA runtime errors on machines without a driver
        return False


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array (from the device), or the NumPy array itself."""
    return array.get() if type(array).__module__.startswith("cupy") else np.asarray(array)


def device_module(device: str) -> ModuleType:
    """Array module for a stage's ``device`` setting: CuPy for "gpu", or for "auto" where a GPU is seen."""
    if device == "gpu" or (device == "auto" and gpu_available()):
        import cupy

        return cupy
    return np


def ndimage_module(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy."""
    if xp is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage
