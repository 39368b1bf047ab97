"""softmaxloss as the multiclass (softmax) objective of gradient boosting: LightGBM
and XGBoost custom objectives built on `softmaxloss.gradient_hessian`.

    from softmaxloss.boosting import lightgbm_multiclass, xgboost_multiclass

    lightgbm.LGBMClassifier(objective=lightgbm_multiclass)                # scikit-learn API
    lightgbm.train({"objective": lightgbm_multiclass, "num_class": K}, dataset)
    xgboost.train({"num_class": K}, dtrain, obj=xgboost_multiclass)
    xgboost.XGBClassifier(objective=xgboost_multiclass)                   # scikit-learn API

Each objective is one callable object that serves both of its library's calling
conventions (checked against LightGBM 4.7 and XGBoost 3.2):
- LightGBM >= 4 passes raw scores of shape (n_samples, n_classes) (a Fortran-ordered
  view of its class-major buffer), as `objective(preds, dataset)` from `lightgbm.train`
  and as `objective(y_true, y_pred, weight)` from the scikit-learn API, and takes
  gradient and hessian of that shape back (it flattens them in Fortran order). The
  kernel reads the Fortran-ordered scores in place and writes Fortran-ordered results,
  so no transposing copy is made on either side.
- XGBoost >= 2 passes margins of shape (n_samples, n_classes) as `obj(predt, dtrain)`
  from `xgboost.train` and as `objective(y_true, y_pred[, sample_weight])` from the
  scikit-learn API, and wants gradient and hessian of shape (n_samples, n_classes).

Gradient and hessian: per sample, g = s (p - onehot(y)), h = f * s * p (1 - p) with p
the softmax of the raw scores, s the sample weight and f the hessian factor. By default
f is the one the library's built-in multiclass objective uses, so that the trees are the
built-in's: K/(K-1) for LightGBM ("multiclass"; Friedman's factor), 2 for XGBoost
("multi:softprob", which also floors the hessian at 1e-16, as done here). Pass
`hessian_factor=1.0` for the plain diagonal of the softmax cross-entropy's hessian
(smaller factors take larger Newton steps).

Non-finite raw scores get what the built-in objectives give them. A row with NaN or
+inf in any class, or -inf in all, has NaN probabilities, so NaN gradients in every
class; -inf beside finite scores is an exact probability 0 there.
- XGBoost: the hessian floor drops NaN (fmax), so such a row's hessians are 1e-16, as
  multi:softprob's. XGBoost's split finder reads a NaN gradient sum as 0, so the
  leaves holding the row get weight 0 and the model stays finite, the built-in's
  model; a NaN hessian would make those leaves, and every prediction, NaN. (The
  built-in also gives NaN to a finite row whose margins are all below about -104,
  where its float32 exp underflows; here such a row gets its true gradients.)
- LightGBM: its Dataset stores an init_score NaN as 0 and +-inf as +-1e300 before any
  objective sees it, so both objectives get finite scores and grow the same trees.
  Called directly, the objective returns NaN hessians on such rows, as the built-in's
  formula does.

Where custom objectives differ from the built-in ones (the libraries', not ours):
- They start from raw score 0 (uniform probabilities), while the built-in objectives
  start from an estimate of the class priors (LightGBM's `boost_from_average`,
  XGBoost's per-class intercept). On balanced classes this hardly matters; on skewed
  ones, pass the log class frequencies as `init_score` / `base_margin` (and add them
  to the raw predictions).
- The libraries cannot invert a custom objective's link: LightGBM's `predict` and
  `predict_proba` and `xgboost.train`'s booster return raw scores; apply
  `softmaxloss.softmax(raw_scores)` for probabilities (XGBClassifier keeps its
  softprob transform and returns probabilities itself). The built-in metrics expect
  probabilities: `softmaxloss.cross_entropy(raw_scores, labels)` is the log loss.

This module imports neither library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._facade import gradient_hessian
from ._validation import check_n_threads

__all__ = ["LightGBMMulticlass", "XGBoostMulticlass", "lightgbm_multiclass", "xgboost_multiclass"]

_XGBOOST_HESSIAN_FLOOR = 1e-16  # XGBoost's built-in softmax objective's floor


def _check_factor(hessian_factor: Any) -> float | None:
    if hessian_factor is None:
        return None
    factor = float(hessian_factor)
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"hessian_factor must be a positive finite number or None; got {hessian_factor!r}")
    return factor


def _raw_scores(raw: Any, library: str) -> np.ndarray:
    scores: np.ndarray = np.asarray(raw)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"the softmax multiclass objective needs raw scores of shape (n_samples, "
            f"n_classes) with n_classes >= 2; {library} passed shape {scores.shape}. Set "
            f"num_class in the parameters (the scikit-learn classifiers do this for "
            f"three or more classes; a two-class problem is binary there)"
        )
    return scores


def _weights(weights: Any) -> np.ndarray | None:
    if weights is None:
        return None
    array: np.ndarray = np.asarray(weights)
    return None if array.size == 0 else array  # XGBoost: an empty array means none


class _Multiclass:
    _library = ""

    def __init__(self, *, hessian_factor: float | None = None, n_threads: int | None = None) -> None:
        self.hessian_factor = _check_factor(hessian_factor)
        check_n_threads(n_threads)
        self.n_threads = n_threads

    def __repr__(self) -> str:
        args = []
        if self.hessian_factor is not None:
            args.append(f"hessian_factor={self.hessian_factor!r}")
        if self.n_threads is not None:
            args.append(f"n_threads={self.n_threads!r}")
        return f"{type(self).__name__}({', '.join(args)})"

    def default_factor(self, n_classes: int) -> float:
        raise NotImplementedError

    def gradient_hessian(
        self, raw_scores: Any, labels: Any, sample_weight: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and hessian of the softmax cross-entropy at `raw_scores`
        (n_samples, n_classes), as this objective returns them to the library."""
        raw_scores = _raw_scores(raw_scores, self._library)
        factor = self.hessian_factor
        if factor is None:
            factor = self.default_factor(raw_scores.shape[1])
        out = None
        if raw_scores.dtype in (np.float32, np.float64):
            # Results in the scores' memory order: LightGBM's Fortran-ordered scores get
            # Fortran-ordered gradients, which it flattens class-major without a copy.
            out = (np.empty_like(raw_scores, order="K"), np.empty_like(raw_scores, order="K"))
        grad, hess = gradient_hessian(
            raw_scores, labels, sample_weight=_weights(sample_weight), out=out, n_threads=self.n_threads
        )
        if factor != 1.0:
            np.multiply(hess, factor, out=hess, casting="unsafe")
        return grad, hess


class LightGBMMulticlass(_Multiclass):
    """LightGBM custom multiclass objective: `objective=LightGBMMulticlass()` in
    `LGBMClassifier` or in `lightgbm.train`'s params (with "num_class").

    hessian_factor: None (default) for LightGBM's built-in K/(K-1) (so the model is the
    one objective="multiclass" with boost_from_average=False grows), or a number (1.0:
    the plain diagonal hessian p(1-p)). n_threads: the kernel's threads (None: OpenMP's
    default).
    """

    _library = "LightGBM"

    def default_factor(self, n_classes: int) -> float:
        return n_classes / (n_classes - 1.0)

    def __call__(self, first: Any, second: Any, weight: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(second, "get_label"):  # lightgbm.train: (preds, dataset)
            return self.gradient_hessian(first, second.get_label(), second.get_weight())
        return self.gradient_hessian(second, first, weight)  # scikit-learn: (y_true, y_pred, weight)


class XGBoostMulticlass(_Multiclass):
    """XGBoost custom multiclass objective: `xgboost.train(params, dtrain,
    obj=XGBoostMulticlass())` (params with "num_class") or
    `XGBClassifier(objective=XGBoostMulticlass())`.

    hessian_factor: None (default) for XGBoost's built-in factor 2 (so the model is the
    one objective="multi:softprob" grows from the same base score), or a number (1.0:
    the plain diagonal hessian p(1-p)). The hessian is floored at 1e-16 as XGBoost's
    built-in objective does (NaN too: see the module's note on non-finite raw scores).
    n_threads: the kernel's threads (None: OpenMP's default).
    """

    _library = "XGBoost"

    def default_factor(self, n_classes: int) -> float:
        return 2.0

    def gradient_hessian(
        self, raw_scores: Any, labels: Any, sample_weight: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        grad, hess = super().gradient_hessian(raw_scores, labels, sample_weight)
        # fmax, as XGBoost's fmaxf: a NaN hessian becomes the floor (np.maximum would keep
        # it). XGBoost tolerates the row's NaN gradients (a leaf holding them gets weight
        # 0) but not a NaN hessian, which makes the leaf weights, and the model, NaN.
        np.fmax(hess, _XGBOOST_HESSIAN_FLOOR, out=hess)
        return grad, hess

    def __call__(self, first: Any, second: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(second, "get_label"):  # xgboost.train: (predt, dtrain)
            return self.gradient_hessian(first, second.get_label(), second.get_weight())
        return self.gradient_hessian(second, first, sample_weight)  # scikit-learn API


#: LightGBM's multiclass objective on softmaxloss, built-in hessian factor K/(K-1).
lightgbm_multiclass = LightGBMMulticlass()
#: XGBoost's multi:softprob objective on softmaxloss, built-in hessian factor 2.
xgboost_multiclass = XGBoostMulticlass()
