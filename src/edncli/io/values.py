"""What makes an array usable as float32 data: finite values whose energy float32 can hold.

edn computes in float32, so a value that is finite in a float64 file can still become Inf when
cast (``|x| > 3.4e38``), and a finite float32 image can still overflow the data term
``½‖Au − f‖²`` (a sum of squares). Both are refused when the data are read, naming the file.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: The largest ``‖f‖²`` accepted: float32's maximum over 2**10, so the energies of iterates a few
#: times the data's size (and their sums over a batch) stay finite.
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 2**10


def float32_problem(arr: np.ndarray, chunk: int = 1 << 22) -> Optional[str]:
    """Why ``arr`` (any real dtype) cannot serve as float32 data, or None when it can.

    Read in chunks of ``chunk`` values, so a large scan needs no full-size temporary.
    """
    flat = np.asarray(arr).reshape(-1)
    bad, peak = 0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, flat.size, chunk):
            part = flat[lo : lo + chunk]
            finite = np.isfinite(part)
            bad += int(part.size - np.count_nonzero(finite))
            if not bad:
                peak = max(peak, float(np.max(np.abs(part), initial=0.0)))
        if bad:
            return f"holds {bad} NaN/Inf values"
        if peak == 0.0:
            return None
        squared = 0.0
        for lo in range(0, flat.size, chunk):
            squared += float(np.sum(np.square(flat[lo : lo + chunk] / peak, dtype=np.float64)))
        squared *= peak * peak
    if not squared <= MAX_SQUARED_NORM:  # also catches an overflow to inf
        return (
            f"holds values up to {peak:.3g}, too large for float32 arithmetic (the sum of squares would "
            f"overflow); rescale the data (e.g. to [0, 1])"
        )
    return None
