import numpy as np
import pytest

from simlab.classifiers import CLASSIFIERS, make_classifier


def toy_problem(seed=0, n=400, d=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) * 0.3 + y[:, None] * 1.0  # separable by the sum
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_each_classifier_learns_a_separable_problem(name):
    X, y = toy_problem()
    Xt, yt = toy_problem(seed=1)
    clf = make_classifier(name, random_state=0).fit(X, y)
    prob = clf.predict_proba(Xt)
    assert prob.shape == (len(yt), 2)
    np.testing.assert_allclose(prob.sum(axis=1), 1, atol=1e-5)
    assert ((prob[:, 1] >= 0.5) == yt).mean() > 0.95


@pytest.mark.parametrize("name", ["rf", "xgboost", "linsvc"])
def test_seeded_classifiers_repeat(name):
    X, y = toy_problem()
    a = make_classifier(name, 7).fit(X, y).predict_proba(X)
    b = make_classifier(name, 7).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b)


def test_library_defaults_give_the_2017_settings_where_simlab_tunes():
    from sklearn.pipeline import Pipeline

    tuned, plain = make_classifier("linsvc"), make_classifier("linsvc", library_defaults=True)
    assert isinstance(tuned, Pipeline) and tuned[-1].estimator.C == 0.01
    assert not isinstance(plain, Pipeline) and plain.estimator.C == 1.0
    assert make_classifier("xgboost").get_params()["max_bin"] == 64
    assert make_classifier("xgboost", library_defaults=True).get_params()["max_bin"] == 256
    assert make_classifier("rf", library_defaults=True).get_params() == make_classifier("rf").get_params()
    X, y = toy_problem()
    assert ((plain.fit(X, y).predict_proba(X)[:, 1] >= 0.5) == y).mean() > 0.95


def test_similarity_threshold_learns_the_sign_for_distances():
    X, y = toy_problem()
    clf = make_classifier("cosine").fit(-X, y)  # a distance: small means same
    assert clf.sign_ == -1
    assert (clf.predict(-X) == y).mean() > 0.95


def test_unknown_classifier_lists_the_choices():
    with pytest.raises(ValueError, match="logreg"):
        make_classifier("bogus")


@pytest.mark.parametrize("name", ["cosine", "mlp"])
def test_simlab_estimators_refuse_three_classes_before_training(name):
    X, y = toy_problem(n=60)
    y[:20] = 2  # a third class: TensorFlow used to abort the process on it
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        make_classifier(name).fit(X, y)


@pytest.mark.parametrize("name", ["cosine", "mlp"])
def test_simlab_estimators_keep_the_labels_they_were_given(name):
    X, y = toy_problem(n=200)
    labels = np.array(["different", "same"])[y]
    clf = make_classifier(name, epochs=2) if name == "mlp" else make_classifier(name)
    clf.fit(X, labels)
    assert list(clf.classes_) == ["different", "same"] and clf.n_features_in_ == X.shape[1]
    assert (clf.predict(X) == labels).mean() > 0.9


def test_each_entry_declares_its_label_params_and_description_once():
    from simlab.classifiers import get_classifier

    xgb = get_classifier("xgboost")
    assert xgb.label == "XGBoost" and "(64 bins)" in xgb.description
    assert make_classifier("xgboost", max_bin=32).get_params()["max_bin"] == 32
    head = make_classifier("mlp", random_state=3)
    assert (head.epochs, head.batch_size, head.random_state) == (10, 32, 3)
    assert "batch 32, 10 epochs" in get_classifier("mlp").description
    assert all(c.label and c.description for c in CLASSIFIERS.values())
