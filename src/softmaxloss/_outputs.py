"""The opt-in extra outputs of a cross-entropy call (issue 16 item 3), shared by the NumPy
API, the reference and the adapters: the result type, and the one rule for the number
of correct predictions.

`cross_entropy(..., return_lse=True)` (or `return_entropy`, `return_argmax`, in any
combination; also on `cross_entropy_with_grad`) returns a `CrossEntropyOutputs` instead
of the bare loss (or `(loss, grad)`): its fields not requested are None. Per-row values
have the logits' shape without the class axis, for every row (ignored ones too: they
are properties of the logits, as `torch.logsumexp` and
`torch.distributions.Categorical(logits=...).entropy()` give them); the loss, its
reduction and its gradient are unchanged by the request.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._validation import check_return_flags


class CrossEntropyOutputs(NamedTuple):
    """What a cross-entropy call with `return_lse`, `return_entropy` or `return_argmax`
    returns; a field not requested is None.

    loss:      the (reduced) loss, as the call returns it without extra outputs.
    grad:      d(loss)/d(logits) (`cross_entropy_with_grad`), None for `cross_entropy`.
    lse:       per-row log-sum-exp of the logits (logits' dtype).
    entropy:   per-row entropy -sum_c p_c log p_c of softmax(logits) (logits' dtype).
    argmax:    per-row np.argmax of the logits (int64; ties: the first, NaN: the first NaN).
    n_correct: the number of rows whose argmax is their target (int): class indices over
               the rows not ignored; probability targets: the argmax of the target row
               (np.argmax, the first of ties), over every row. Unweighted.
    """

    loss: Any
    grad: np.ndarray | None = None
    lse: Any = None
    entropy: Any = None
    argmax: Any = None
    n_correct: int | None = None


def n_correct(argmax: np.ndarray, target: np.ndarray, probabilities: bool, axis: int,
              ignored: int) -> int:
    """The number of correct predictions (see CrossEntropyOutputs.n_correct): O(rows)
    for class indices; for probabilities one np.argmax over the target, no N x C
    temporary. `target` as validated (int64 indices of the rows' shape, or probabilities
    of the logits' shape, class axis `axis`); `ignored`: the index value of ignored rows."""
    if probabilities:
        labels = np.argmax(target, axis=axis)
        return int(np.count_nonzero(labels == argmax))
    return int(np.count_nonzero((target == argmax) & (target != ignored)))


def requested_outputs(return_lse: Any, return_entropy: Any, return_argmax: Any,
                      where: Any) -> tuple[bool, bool, bool] | None:
    """Which extra outputs a call asks for (None: none, the plain call), checked: each
    flag a bool (TypeError), none with `where=` (ValueError). With `softcap=` they are
    the capped logits' outputs (what the loss sees)."""
    requested = check_return_flags(return_lse, return_entropy, return_argmax)
    if not any(requested):
        return None
    if where is not None:
        raise ValueError("return_lse, return_entropy and return_argmax do not combine with where= (a class mask)")
    return requested
