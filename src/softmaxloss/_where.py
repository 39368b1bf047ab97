"""`where=` masks over classes, written once for the NumPy API (`softmaxloss._facade`)
and the optax drop-ins (`softmaxloss.jax`): the value that stands in for a masked-out
logit so that the fused kernel, unchanged, leaves that class out.

The kernel computes exp(x_c - max) per class. A masked entry replaced, in a copy, by a
value this far below the row's largest kept logit gets exp exactly 0 (the kernel's exp
flushes x - max < -104 in float32 and < -745.2 in float64): probability 0 and gradient 0,
and the softmax, the log-sum-exp and the z-loss are those of the kept classes exactly.
A finite stand-in (not -inf) keeps every product with the masked entry finite: a zero
target there adds 0, not 0 * inf = NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# How far below the row's largest kept logit the stand-in lies, at least.
MASKED_GAP = {np.dtype(np.float32): 256.0, np.dtype(np.float64): 2048.0}


def stand_in(xp: Any, kept_max: Any, any_kept: Any, dtype: Any) -> Any:
    """The value of a row's masked-out entries, from its largest kept logit `kept_max`
    (NaN if a kept logit is NaN) and whether it keeps any class, both per row (in the
    array namespace `xp`, numpy or jax.numpy; `dtype` float32 or float64):

    - kept_max >= 0, +inf or NaN: -gap (a row with +inf or NaN is NaN anyway);
    - finite kept_max < 0: 2 kept_max - gap, at least the dtype's lowest value (so the
      difference is at least the gap however large |kept_max| is);
    - kept_max = -inf (every kept logit -inf): -inf, a row of -inf as without a mask;
      also kept_max = the dtype's lowest finite value, below which no finite value lies
      (there a zero probability target at a masked class gives NaN, as a zero target at
      a -inf logit does without a mask);
    - no class kept: 0 (a finite row; its loss and gradient are set to 0 by the caller).
    """
    gap = MASKED_GAP[np.dtype(dtype)]
    lowest = float(np.finfo(dtype).min)
    with np.errstate(over="ignore", invalid="ignore"):  # 2 kept_max overflowing to -inf
        below = xp.where(kept_max < 0, xp.maximum(2 * kept_max - gap, lowest), -gap)
        value = xp.where(kept_max <= lowest, -np.inf, below)
    return xp.where(any_kept, value, 0).astype(dtype)
