"""scikit-learn's own estimator suite on simlab's estimators (check_estimator, one test per check).

The Keras head runs with one epoch and one small hidden layer, a faster learning rate making up
for both: the checks are about manners (validation, tags, fitted attributes, cloning, pickling),
not accuracy at the study's size. No check is expected to fail: being binary only, both
estimators declare it in their tags, and the suite then checks that they refuse three classes.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from simlab.classifiers import KerasHead, SimilarityThreshold


@parametrize_with_checks([SimilarityThreshold(), KerasHead(epochs=1, hidden=(16,), learning_rate=1e-2)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
