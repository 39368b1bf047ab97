"""softmaxloss as LightGBM's multiclass objective: the one-line change.

    lightgbm.LGBMClassifier()                                       # built-in "multiclass"
    lightgbm.LGBMClassifier(objective=softmaxloss.boosting.lightgbm_multiclass)

    lightgbm.train({"objective": "multiclass", "num_class": 10}, data)
    lightgbm.train({"objective": lightgbm_multiclass, "num_class": 10}, data)

With a custom objective LightGBM returns raw scores (it cannot invert a link it does not
know): softmaxloss.softmax turns them into probabilities and softmaxloss.cross_entropy
gives the log loss. The custom objective starts from raw score 0, the built-in one from
the log class priors (boost_from_average); with that switched off the two grow the same
trees, as the last lines show.

Run: python examples/lightgbm_adapter.py   (needs lightgbm and scikit-learn)
"""

from __future__ import annotations

import lightgbm
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import softmaxloss as sml
from softmaxloss.boosting import LightGBMMulticlass, lightgbm_multiclass


def main() -> None:
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    common = dict(n_estimators=30, learning_rate=0.1, num_leaves=15, verbose=-1, random_state=0)

    print("scikit-learn API, 30 rounds:")
    for name, objective in [("built-in 'multiclass'", None), ("softmaxloss lightgbm_multiclass", lightgbm_multiclass),
                            ("softmaxloss, hessian_factor=1.0", LightGBMMulticlass(hessian_factor=1.0))]:
        model = lightgbm.LGBMClassifier(objective=objective, **common).fit(x_train, y_train)
        train_scores = model.predict(x_train, raw_score=True)
        test_scores = model.predict(x_test, raw_score=True)
        probabilities = sml.softmax(test_scores)  # for the custom objectives: raw scores -> probabilities
        print(f"  {name:34s} train log loss {sml.cross_entropy(train_scores, y_train):.5f}, "
              f"test log loss {sml.cross_entropy(test_scores, y_test):.4f}, "
              f"test accuracy {np.mean(probabilities.argmax(axis=1) == y_test):.3f}")

    params = dict(num_class=10, learning_rate=0.1, num_leaves=15, verbose=-1, seed=0, deterministic=True,
                  boost_from_average=False)
    builtin = lightgbm.train(dict(params, objective="multiclass"), lightgbm.Dataset(x_train, y_train), 30)
    custom = lightgbm.train(dict(params, objective=lightgbm_multiclass), lightgbm.Dataset(x_train, y_train), 30)
    difference = np.max(np.abs(builtin.predict(x_test, raw_score=True) - custom.predict(x_test, raw_score=True)))
    print(f"lightgbm.train, boost_from_average=False: largest difference between the raw scores of the "
          f"built-in and the softmaxloss objective: {difference:.1e}")
    assert difference < 1e-6, difference


if __name__ == "__main__":
    main()
