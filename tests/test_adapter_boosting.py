"""softmaxloss.boosting: LightGBM and XGBoost multiclass objectives, against the
libraries' built-in multiclass objectives on scikit-learn's digits. Each library's
tests skip without it; `import softmaxloss` imports none of the adapted libraries."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

import softmaxloss as sml
import softmaxloss.reference as ref
from softmaxloss.boosting import (
    LightGBMMulticlass,
    XGBoostMulticlass,
    lightgbm_multiclass,
    xgboost_multiclass,
)

ROUNDS = 30


def test_importing_softmaxloss_imports_no_framework():
    """`import softmaxloss` (and its boosting module, which duck-types the libraries'
    datasets) imports none of torch, jax, lightgbm, xgboost, scikit-learn."""
    code = (
        "import sys, softmaxloss, softmaxloss.boosting\n"
        "loaded = [m for m in ('torch', 'jax', 'jaxlib', 'lightgbm', 'xgboost', 'sklearn', 'optax')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class FakeDataset:
    """What the objectives use of lightgbm.Dataset / xgboost.DMatrix."""

    def __init__(self, labels, weight):
        self.labels, self.weight = labels, weight

    def get_label(self):
        return self.labels

    def get_weight(self):
        return self.weight


@pytest.mark.parametrize("weighted", [False, True])
def test_objectives_gradient_and_hessian(rng, weighted):
    """g = s (p - onehot), h = f s p (1 - p) with the library's default factor (or the
    one given), for both calling conventions; LightGBM's Fortran-ordered scores give
    Fortran-ordered results (no transposing copy), labels may be floats."""
    n, k = 50, 4
    scores = np.asfortranarray(rng.standard_normal((n, k)) * 2)
    labels = rng.integers(0, k, n).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, n) if weighted else None
    expected_g, expected_h = ref.gradient_hessian(scores, labels.astype(int), sample_weight=weight)

    for objective, factor in [(lightgbm_multiclass, k / (k - 1)), (LightGBMMulticlass(hessian_factor=1.0), 1.0)]:
        native = objective(scores, FakeDataset(labels, weight))
        sklearn = objective(labels, scores, weight)
        for grad, hess in (native, sklearn):
            assert grad.shape == hess.shape == (n, k) and grad.flags.f_contiguous and hess.flags.f_contiguous
            np.testing.assert_allclose(grad, expected_g, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(hess, factor * expected_h, rtol=1e-12, atol=1e-15)

    scores32 = np.ascontiguousarray(scores, dtype=np.float32)
    empty = np.empty(0, np.float32)  # XGBoost's "no weights"
    for objective, factor in [(xgboost_multiclass, 2.0), (XGBoostMulticlass(hessian_factor=1.0), 1.0)]:
        native = objective(scores32, FakeDataset(labels, empty if weight is None else weight))
        sklearn = objective(labels, scores32) if weight is None else objective(labels, scores32, sample_weight=weight)
        for grad, hess in (native, sklearn):
            assert grad.dtype == hess.dtype == np.float32 and grad.shape == (n, k)
            np.testing.assert_allclose(grad, expected_g, rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(hess, np.maximum(factor * expected_h, 1e-16), rtol=2e-6, atol=1e-7)


# Rows with non-finite raw scores (column 3 of a row, or all of it), as gradient_hessian
# treats them: NaN or +inf anywhere, or -inf everywhere, gives NaN probabilities (so
# NaN in both built-ins' formulas too); -inf beside finite scores is probability 0.
NON_FINITE_ROWS = {"nan": ([3], np.nan), "+inf": ([3], np.inf), "all -inf": (slice(None), -np.inf)}


def test_objectives_on_non_finite_raw_scores():
    """The gradient pairs of the built-ins' formulas (XGBoost's multiclass_obj.cu,
    LightGBM's multiclass_objective.hpp): a NaN-probability row gets NaN gradients in
    every class; XGBoost's hessian is then its 1e-16 floor (fmaxf drops the NaN),
    LightGBM's stays NaN. -inf beside finite scores gives p = 0 there: gradient 0 and
    hessian 0 (XGBoost: the floor). Other rows are unaffected."""
    k = 4
    scores = np.zeros((5, k))
    for row, (cols, value) in enumerate(NON_FINITE_ROWS.values()):
        scores[row, cols] = value
    scores[3, 1] = -np.inf  # beside finite scores
    labels = np.array([0.0, 3.0, 1.0, 2.0, 0.0], np.float32)
    expected_g, expected_h = ref.gradient_hessian(scores[3:], labels[3:].astype(int))

    for objective, dtype, floor in [(xgboost_multiclass, np.float32, 1e-16), (lightgbm_multiclass, np.float64, None)]:
        grad, hess = objective(scores.astype(dtype), FakeDataset(labels, None))
        assert np.isnan(grad[:3]).all()
        if floor is None:
            assert np.isnan(hess[:3]).all()
        else:
            np.testing.assert_array_equal(hess[:3], np.float32(floor))
        assert grad[3, 1] == 0 and hess[3, 1] == (floor or 0)
        factor = objective.default_factor(k)
        np.testing.assert_allclose(grad[3:], expected_g, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(hess[3:], np.maximum(factor * expected_h, floor or 0), rtol=2e-6, atol=1e-7)


def test_objective_errors():
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_classes\).*passed shape \(5,\).*num_class"):
        lightgbm_multiclass(np.zeros(5), FakeDataset(np.zeros(5), None))
    with pytest.raises(ValueError, match="XGBoost passed shape"):
        xgboost_multiclass(np.zeros((5, 1), np.float32), FakeDataset(np.zeros(5), np.empty(0)))
    with pytest.raises(ValueError, match="out of range"):
        lightgbm_multiclass(np.zeros((3, 3)), FakeDataset(np.array([0.0, 3.0, 1.0]), None))
    with pytest.raises(ValueError, match="hessian_factor must be a positive"):
        LightGBMMulticlass(hessian_factor=0.0)
    with pytest.raises(ValueError, match="n_threads"):
        XGBoostMulticlass(n_threads=0)
    assert repr(LightGBMMulticlass(hessian_factor=1.0)) == "LightGBMMulticlass(hessian_factor=1.0)"


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's bundled digits (1797 x 64, 10 classes), a stratified 70/30 split."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    x, y = datasets.load_digits(return_X_y=True)
    return model_selection.train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def assert_as_good(custom, builtin, y_train, y_test):
    """The issue's bar: held-out accuracy within 1 point of the built-in objective's,
    training log loss within 1%. Arguments: (train, test) raw-score pairs."""
    accuracy = [np.mean(test.argmax(1) == y_test) for _, test in (custom, builtin)]
    loss = [float(sml.cross_entropy(train, y_train)) for train, _ in (custom, builtin)]
    assert accuracy[0] >= accuracy[1] - 0.01, accuracy
    assert abs(loss[0] - loss[1]) <= 0.01 * loss[1], loss


LGB_PARAMS = dict(learning_rate=0.1, num_leaves=15, verbose=-1, deterministic=True, force_row_wise=True, seed=0)


def test_lightgbm_train_with_the_objective_grows_the_builtin_model(digits):
    """lgb.train(params={"objective": lightgbm_multiclass}): the same trees as
    objective="multiclass" started from score 0 (boost_from_average=False), so the raw
    scores agree to rounding; also with sample weights."""
    lgb = pytest.importorskip("lightgbm")
    x_train, x_test, y_train, _ = digits
    weight = np.random.default_rng(0).uniform(0.5, 2.0, len(y_train))
    params = dict(LGB_PARAMS, num_class=10, num_threads=1)
    for w in (None, weight):
        builtin = lgb.train(dict(params, objective="multiclass", boost_from_average=False),
                            lgb.Dataset(x_train, y_train, weight=w), ROUNDS)
        custom = lgb.train(dict(params, objective=lightgbm_multiclass), lgb.Dataset(x_train, y_train, weight=w), ROUNDS)
        np.testing.assert_allclose(custom.predict(x_test, raw_score=True), builtin.predict(x_test, raw_score=True),
                                   rtol=0, atol=1e-6)


def test_lgbm_classifier_with_the_objective_matches_the_builtin(digits):
    """LGBMClassifier(objective=lightgbm_multiclass) against LGBMClassifier() at its
    defaults, which starts from the class priors (boost_from_average): same rounds,
    accuracy within 1 point, training loss within 1% (digits' classes are balanced,
    so the priors are near uniform and the head start is small)."""
    lgb = pytest.importorskip("lightgbm")
    x_train, x_test, y_train, y_test = digits
    common = dict(LGB_PARAMS, n_estimators=ROUNDS, n_jobs=1)
    models = [lgb.LGBMClassifier(objective=lightgbm_multiclass, **common), lgb.LGBMClassifier(**common)]
    scores = [(m.fit(x_train, y_train).predict(x_train, raw_score=True), m.predict(x_test, raw_score=True))
              for m in models]
    assert_as_good(*scores, y_train, y_test)
    restored = pickle.loads(pickle.dumps(models[0]))  # the objective is picklable
    np.testing.assert_array_equal(restored.predict(x_test, raw_score=True), scores[0][1])


@pytest.mark.parametrize("case", NON_FINITE_ROWS)
def test_lightgbm_non_finite_init_score_in_one_row_gives_the_builtin_model(digits, case):
    """An init_score row with NaN or +inf in a class, or -inf in all: LightGBM's
    Dataset stores NaN as 0 and +-inf as +-1e300 (Common::AvoidInf) before either
    objective sees the scores, so both get finite scores and grow the same finite
    model, from lgb.train and from LGBMClassifier."""
    lgb = pytest.importorskip("lightgbm")
    x_train, x_test, y_train, _ = digits
    cols, value = NON_FINITE_ROWS[case]
    init_score = np.zeros((len(y_train), 10))
    init_score[0, cols] = value
    dataset = lgb.Dataset(x_train, y_train, init_score=init_score).construct()
    stored = np.asarray(dataset.get_init_score()).reshape(len(y_train), 10, order="F")
    np.testing.assert_array_equal(stored[0], np.nan_to_num(init_score[0], nan=0.0, posinf=1e300, neginf=-1e300))

    params = dict(LGB_PARAMS, num_class=10, num_threads=1)
    raw = [lgb.train(dict(params, **objective), lgb.Dataset(x_train, y_train, init_score=init_score),
                     ROUNDS).predict(x_test, raw_score=True)
           for objective in ({"objective": "multiclass", "boost_from_average": False},
                             {"objective": lightgbm_multiclass})]
    common = dict(LGB_PARAMS, n_estimators=ROUNDS, n_jobs=1)
    raw += [lgb.LGBMClassifier(boost_from_average=False, **common).fit(x_train, y_train, init_score=init_score)
            .predict(x_test, raw_score=True),
            lgb.LGBMClassifier(objective=lightgbm_multiclass, **common).fit(x_train, y_train, init_score=init_score)
            .predict(x_test, raw_score=True)]
    assert np.isfinite(raw[0]).all()
    for custom in raw[1:]:
        np.testing.assert_allclose(custom, raw[0], rtol=0, atol=1e-6)


XGB_PARAMS = dict(num_class=10, max_depth=4, eta=0.3, nthread=1, tree_method="hist", seed=0)


def test_xgboost_train_with_the_objective_grows_the_builtin_model(digits):
    """xgb.train(obj=xgboost_multiclass): the same trees as multi:softprob from the same
    base score, so the margins agree to float32 rounding; also with sample weights."""
    xgb = pytest.importorskip("xgboost")
    x_train, x_test, y_train, _ = digits
    weight = np.random.default_rng(0).uniform(0.5, 2.0, len(y_train))
    for w in (None, weight):
        dtrain, dtest = xgb.DMatrix(x_train, label=y_train, weight=w), xgb.DMatrix(x_test)
        builtin = xgb.train(dict(XGB_PARAMS, objective="multi:softprob", base_score=0.0), dtrain, ROUNDS)
        custom = xgb.train(dict(XGB_PARAMS, base_score=0.0, disable_default_eval_metric=True), dtrain, ROUNDS,
                           obj=xgboost_multiclass)
        np.testing.assert_allclose(custom.predict(dtest, output_margin=True),
                                   builtin.predict(dtest, output_margin=True), rtol=0, atol=1e-4)


def test_xgboost_with_the_objective_matches_the_builtin(digits):
    """xgb.train(obj=...) and XGBClassifier(objective=...) against the built-in
    multi:softprob at its defaults (which starts from a per-class intercept): accuracy
    within 1 point, training loss within 1%. XGBClassifier keeps its softprob
    transform, so predict_proba gives probabilities."""
    xgb = pytest.importorskip("xgboost")
    x_train, x_test, y_train, y_test = digits
    dtrain, dtest = xgb.DMatrix(x_train, label=y_train), xgb.DMatrix(x_test)

    def margins(booster):
        return booster.predict(dtrain, output_margin=True), booster.predict(dtest, output_margin=True)

    builtin = margins(xgb.train(dict(XGB_PARAMS, objective="multi:softprob"), dtrain, ROUNDS))
    custom = margins(xgb.train(dict(XGB_PARAMS, disable_default_eval_metric=True), dtrain, ROUNDS,
                               obj=xgboost_multiclass))
    assert_as_good(custom, builtin, y_train, y_test)

    classifier = xgb.XGBClassifier(objective=xgboost_multiclass, n_estimators=ROUNDS, max_depth=4,
                                   learning_rate=0.3, n_jobs=1, tree_method="hist", random_state=0)
    classifier.fit(x_train, y_train)
    probabilities = classifier.predict_proba(x_test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    raw = classifier.predict(x_train, output_margin=True), classifier.predict(x_test, output_margin=True)
    assert_as_good(raw, builtin, y_train, y_test)
    np.testing.assert_array_equal(classifier.predict(x_test), probabilities.argmax(axis=1))


@pytest.mark.parametrize("case", NON_FINITE_ROWS)
def test_xgboost_non_finite_margin_in_one_row_gives_the_builtin_model(digits, case):
    """A base_margin row with NaN or +inf in a class, or -inf in all: multi:softprob
    gives the row NaN gradients with its 1e-16 hessian floor, and XGBoost's split
    finder reads a NaN gradient sum as 0 (ThresholdL1), so the leaves holding the row
    get weight 0 and the model stays finite (a NaN hessian would make them NaN). The
    objective returns the same pairs, so from xgb.train and from XGBClassifier the
    model is the built-in's: finite, margins equal to float32 rounding."""
    xgb = pytest.importorskip("xgboost")
    x_train, x_test, y_train, _ = digits
    cols, value = NON_FINITE_ROWS[case]
    margin = np.zeros((len(y_train), 10), np.float32)
    margin[0, cols] = value
    dtrain, dtest = xgb.DMatrix(x_train, label=y_train, base_margin=margin), xgb.DMatrix(x_test)
    builtin = xgb.train(dict(XGB_PARAMS, objective="multi:softprob", base_score=0.0), dtrain, ROUNDS)
    custom = xgb.train(dict(XGB_PARAMS, base_score=0.0, disable_default_eval_metric=True), dtrain, ROUNDS,
                       obj=xgboost_multiclass)
    expected = builtin.predict(dtest, output_margin=True)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(custom.predict(dtest, output_margin=True), expected, rtol=0, atol=1e-4)

    common = dict(n_estimators=ROUNDS, max_depth=4, learning_rate=0.3, n_jobs=1, tree_method="hist",
                  random_state=0, base_score=0.0)
    classifier = xgb.XGBClassifier(objective=xgboost_multiclass, **common).fit(x_train, y_train, base_margin=margin)
    np.testing.assert_allclose(classifier.predict(x_test, output_margin=True), expected, rtol=0, atol=1e-4)
