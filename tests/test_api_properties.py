"""Property-based tests of the Python API's promise (Hypothesis): whatever the input, a public call either
raises a ``CincerError`` (one line) and leaves the cleaner exactly as it was, or succeeds with the loop's
invariants intact: labels change only through answers (so the noise in D moves only by the annotator's
decisions), one decision per query, every index inside the pool.

Random valid and invalid inputs go to ``fit``, ``set_params`` and ``counterexamples``; a state machine
drives sequences of ``observe``, ``answer`` (pending, answered, stale and foreign queries, by object or id),
``next_queries``, ``audit`` (batches, cross-fitting), ``refit``, ``set_params``, ``label_issues``, ``fit``
and ``save``/``load``, with a scikit-learn ``LogisticRegression`` or a two-layer PyTorch net.

The default profile (``ci``) is small and deterministic, well under a minute. A longer search::

    HYPOTHESIS_PROFILE=long pytest tests/test_api_properties.py     # 300 examples per test, 30 steps per run
"""

import os
import re
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sklearn.linear_model import LogisticRegression
from torch import nn

from apihelpers import assert_same_state, state_of
from cincer import CincerError, Cleaner, LabelQuery, counterexamples
from cincer.models import TrainConfig

QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=30, stateful_step_count=15, deadline=None, derandomize=True,
                          database=None, suppress_health_check=QUIET, print_blob=True)
settings.register_profile("long", max_examples=300, stateful_step_count=30, deadline=None, database=None,
                          suppress_health_check=QUIET, print_blob=True)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY = TrainConfig(epochs=3, batch_size=16, lr=1e-2)
RETRAIN = ("sync", "answer", "head", "defer")
QUERY_ID = re.compile(r"^[0-9a-f]{8}:\d+$")


def _data():
    g = np.random.default_rng(0)
    centres = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    clean = np.arange(90) % 3
    X = centres[clean] + g.normal(scale=0.8, size=(90, 4))
    noisy = clean.copy()
    flip = g.choice(90, 18, replace=False)
    noisy[flip] = (clean[flip] + 1) % 3
    return X, clean, noisy


X, CLEAN, NOISY = _data()


def make_model(kind: str):
    if kind == "logreg":
        return LogisticRegression(max_iter=200)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()


FOREIGN = Cleaner(LogisticRegression(max_iter=200), retrain="defer").fit(X[:30], NOISY[:30]).next_queries(1)[0]
FITTED = LogisticRegression(max_iter=200).fit(X, NOISY)


def attempt(cleaner: Cleaner, call):
    """``call()``: its result, or ``FAILED`` after a one-line CincerError that changed nothing."""
    before = state_of(cleaner)
    try:
        result = call()
    except CincerError as err:
        assert "\n" not in str(err), str(err)
        assert_same_state(before, state_of(cleaner))
        event(f"refused: {type(err).__name__}")
        return FAILED
    event("done")
    return result


FAILED = object()

# --------------------------------------------------------------------------- strategies

BAD_VALUES = st.sampled_from([None, np.nan, np.inf, "x", "1", -1, 0, 2.5, True, [1], {"a": 1}, 10**12])
LABELS = st.one_of(st.sampled_from([0, 1, 2]), st.sampled_from([np.int64(1), 2.0, True]),
                   st.sampled_from([-1, 3, None, np.nan, "1", "a", (0,), 2.5]))


@st.composite
def rows(draw):
    """One example: mostly a real one, else a wrong length, NaN/inf, a string, two rows, nothing."""
    kind = draw(st.sampled_from(["row", "row", "row", "tensor", "short", "nan", "inf", "text", "two", "none"]))
    x = X[draw(st.integers(0, len(X) - 1))]
    return {"row": x, "tensor": torch.as_tensor(x), "short": x[:3], "nan": np.r_[x[:3], np.nan],
            "inf": np.r_[np.inf, x[1:]], "text": "abcd", "two": X[:2], "none": None}[kind]


@st.composite
def datasets(draw):
    """``(X, y)``: mostly valid, else with NaN/inf, no columns, too few rows, or labels that are None, NaN, of
    mixed types, continuous, multi-output, a single class, or of the wrong length."""
    n = draw(st.integers(0, 30))
    d = draw(st.sampled_from([4, 4, 4, 0, 2]))
    X = draw(st.lists(st.floats(-4, 4, allow_nan=False), min_size=n * d, max_size=n * d))
    X = np.asarray(X, dtype=np.float64).reshape(n, d)
    if n and d and draw(st.booleans()) and draw(st.booleans()):
        X[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    kind = draw(st.sampled_from(["ints", "ints", "ints", "strings", "none", "nan", "mixed", "continuous", "2d",
                                 "single", "short"]))
    ints = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    y = {"ints": ints, "strings": [f"c{v}" for v in ints], "none": [None] + ints[1:],
         "nan": np.r_[np.nan, ints[1:]] if n else [], "mixed": ["0"] + ints[1:],
         "continuous": list(np.linspace(0, 1, n)), "2d": np.eye(3)[ints] if n else np.zeros((0, 3)),
         "single": [1] * n, "short": ints[:-1]}[kind]
    return X, y


PARAMS = {
    "k": st.one_of(st.integers(1, 6), BAD_VALUES),
    "retrain": st.one_of(st.sampled_from(RETRAIN), BAD_VALUES),
    "refit_every": st.one_of(st.integers(1, 4), BAD_VALUES),
    "seed": st.one_of(st.integers(0, 5), BAD_VALUES),
    "threshold": st.one_of(st.none(), st.floats(0.05, 0.9), BAD_VALUES),
    "inspector": st.sampled_from(["margin", "always", "cleanlab", "never", "bogus", 3]),
    "selector": st.sampled_from(["top_fisher", "nearest", "random", "none", "full_fisher", "bogus"]),
    "selector_params": st.sampled_from([None, {}, {"damping": 0.5}, {"damping": -1.0}, {"fim_samples": 5},
                                        {"dampng": 1.0}, [1]]),
    "classes": st.sampled_from([None, [0, 1, 2], [0, 1, 2, 3], [0, 0, 1], "abc", [0, None]]),
    "device": st.sampled_from(["cpu", "auto", "cuda", "tpu", None, 3]),
    "head": st.sampled_from([None, "2", "0", "nope", 5]),
    "train_config": st.sampled_from([None, TINY, TrainConfig(epochs=2), {"epochs": 1}]),
    "model__C": st.one_of(st.floats(0.1, 10), BAD_VALUES),
    "bogus": st.just(1),
}


# --------------------------------------------------------------------------- one call at a time

@PROFILE
@given(data=datasets(), kind=st.sampled_from(["logreg", "torch"]), fitted=st.booleans())
def test_fit_either_refuses_and_changes_nothing_or_fits_the_data_as_given(data, kind, fitted):
    X_, y = data
    cleaner = Cleaner(make_model(kind), train_config=TINY, retrain="defer")
    if fitted:
        cleaner.fit(X[:24], NOISY[:24])
    result = attempt(cleaner, lambda: cleaner.fit(X_, y))
    if result is FAILED:
        return
    assert result is cleaner and len(cleaner.X_) == len(X_) and cleaner.model_ is not cleaner.model
    labels = np.asarray(y)
    assert list(cleaner.labels_) == list(labels) and list(cleaner.classes_) == sorted(set(labels.tolist()))
    assert cleaner.pending_ == {} and cleaner.history_ == [] and list(cleaner.loop_.known) == list(range(len(X_)))


@PROFILE
@given(params=st.lists(st.sampled_from(sorted(PARAMS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: PARAMS[name] for name in names})),
    kind=st.sampled_from(["logreg", "torch"]), fitted=st.booleans())
def test_set_params_either_refuses_and_changes_nothing_or_sets_everything(params, kind, fitted):
    cleaner = Cleaner(make_model(kind), train_config=TINY, retrain="defer")
    if fitted:
        cleaner.fit(X[:24], NOISY[:24])
    model_params = cleaner.model.get_params() if kind == "logreg" else None
    result = attempt(cleaner, lambda: cleaner.set_params(**params))
    if result is FAILED:
        if model_params is not None:
            assert cleaner.model.get_params() == model_params  # nothing set on the model either
        return
    values = cleaner.get_params(deep=True)
    assert all(values[name] is value or values[name] == value for name, value in params.items())
    if fitted:  # the fitted cleaner goes on with its new parameters
        attempt(cleaner, lambda: cleaner.next_queries(1))


@st.composite
def counterexample_calls(draw):
    """The arguments of a ``counterexamples`` call: all valid a third of the time, else one of them wrong."""
    wrong = draw(st.sampled_from([None, None, None, "x", "y", "k", "fim_samples", "damping", "device"]))
    valid = {"x": st.builds(lambda i: X[i] + 0.1, st.integers(0, len(X) - 1)), "y": st.sampled_from([0, 1, 2]),
             "k": st.integers(1, 8), "fim_samples": st.one_of(st.none(), st.integers(1, 30)),
             "damping": st.floats(0, 2), "device": st.sampled_from(["cpu", "auto"])}
    bad = {"x": rows(), "y": LABELS, "k": BAD_VALUES, "fim_samples": BAD_VALUES, "damping": BAD_VALUES,
           "device": st.sampled_from(["cuda", "gpu", 3])}
    return {name: draw(bad[name] if name == wrong else valid[name]) for name in valid}


@PROFILE
@given(kind=st.sampled_from(["logreg", "torch"]), call=counterexample_calls())
def test_counterexamples_either_refuses_or_ranks_the_candidates(kind, call):
    x, y, k = call.pop("x"), call.pop("y"), call.pop("k")
    model = FITTED if kind == "logreg" else make_model("torch")
    coef = FITTED.coef_.copy()
    weights = {n: v.clone() for n, v in model.state_dict().items()} if kind == "torch" else {}
    try:
        indices, scores = counterexamples(model, X, NOISY, x, y, k, **call)
    except CincerError as err:
        assert "\n" not in str(err)
        event(f"refused: {type(err).__name__}")
    else:
        event("ranked")
        assert len(indices) == len(scores) <= k and len(set(indices)) == len(indices)
        assert np.all(np.diff(scores) <= 0)
        if len(indices):  # candidates carry the model's prediction for x
            assert len(set(NOISY[indices])) == 1
    np.testing.assert_array_equal(FITTED.coef_, coef)  # the model given is never changed
    if kind == "torch":
        assert all(torch.equal(v, weights[n]) for n, v in model.state_dict().items()) and model.training


# --------------------------------------------------------------------------- sequences of calls

class CleanerMachine(RuleBasedStateMachine):
    """A session of random calls; ``expected`` replays the answers on the labels as given."""

    @initialize(kind=st.sampled_from(["logreg", "torch"]), retrain=st.sampled_from(RETRAIN), n=st.integers(15, 45),
                inspector=st.sampled_from(["margin", "margin", "always"]))
    def start(self, kind, retrain, n, inspector):
        self.kind = kind
        self.cleaner = Cleaner(make_model(kind), train_config=TINY, retrain=retrain, refit_every=2, k=3,
                               inspector=inspector).fit(X[:n], NOISY[:n])
        self.expected = list(NOISY[:n])
        self.stream = n
        self.queries: list[LabelQuery] = []  # every query seen: pending, answered, or of an earlier fit
        self.audit = None
        self.folder = tempfile.TemporaryDirectory()

    def teardown(self):
        self.folder.cleanup()

    # ------------------------------------------------------------------- rules
    @rule(x=rows(), y=LABELS)
    def observe(self, x, y):
        result = attempt(self.cleaner, lambda: self.cleaner.observe(x, y))
        if result is FAILED:
            return
        self.expected.append(int(y))
        self.stream += 1
        if result is not None:
            assert result.index == len(self.expected) - 1 and result.id in self.cleaner.pending_
            self.queries.append(result)

    @rule(pick=st.integers(0, 10**6), how=st.sampled_from(["object", "id", "foreign", "garbage", "unknown"]),
          suspicious=LABELS | st.none(), counter=LABELS | st.none(), retrain=st.sampled_from([None, True, False, 1]))
    def answer(self, pick, how, suspicious, counter, retrain):
        cleaner = self.cleaner
        if how in ("object", "id") and self.queries:
            query = self.queries[pick % len(self.queries)]
            given = query if how == "object" else query.id
        else:
            given = {"foreign": FOREIGN, "garbage": pick, "unknown": f"{cleaner.uid_}:{10**6 + pick}",
                     "object": "nothing", "id": "nothing"}[how]
        was_pending = isinstance(given, (LabelQuery, str)) and getattr(given, "id", given) in cleaner.pending_
        result = attempt(cleaner, lambda: cleaner.answer(given, suspicious, counter, retrain=retrain))
        if result is FAILED:
            return
        assert was_pending  # only a pending query of this cleaner is answered, once
        qid = getattr(given, "id", given)
        assert qid not in cleaner.pending_ and cleaner.history_[-1]["query"] == qid
        for index, (old, new) in result.items():
            assert self.expected[index] == old
            self.expected[index] = new

    @rule(n=st.one_of(st.integers(1, 4), BAD_VALUES))
    def next_queries(self, n):
        before = set(self.cleaner.pending_)
        pending_indices = {q.index for q in self.cleaner.pending_.values()}
        result = attempt(self.cleaner, lambda: self.cleaner.next_queries(n))
        if result is FAILED:
            return
        assert len(result) <= n and not {q.id for q in result} & before
        assert not {q.index for q in result} & pending_indices and len({q.index for q in result}) == len(result)
        self.queries += result

    @rule(budget=st.one_of(st.integers(1, 5), BAD_VALUES), batch=st.one_of(st.none(), st.integers(1, 3), BAD_VALUES),
          cv=st.sampled_from([None, None, 2, 3, 1, "2"]))
    def audit(self, budget, batch, cv):
        result = attempt(self.cleaner, lambda: self.cleaner.audit(budget=budget, batch=batch, cv=cv))
        self.audit = None if result is FAILED else (result, batch)
        self.audit_more()

    @precondition(lambda self: self.audit is not None)
    @rule()
    def audit_more(self):
        if self.audit is None:
            return
        generator, batch = self.audit
        result = attempt(self.cleaner, lambda: next(generator, None))
        if result is FAILED or result is None:
            self.audit = None
            return
        got = result if batch is not None else [result]
        assert all(q.id in self.cleaner.pending_ for q in got) and (batch is None or len(got) <= batch)
        self.queries += got

    @rule()
    def refit(self):
        attempt(self.cleaner, self.cleaner.refit)

    @rule(name=st.sampled_from(["k", "retrain", "refit_every", "threshold", "inspector", "selector",
                                "selector_params", "seed", "device", "bogus"]), data=st.data())
    def set_params(self, name, data):
        value = data.draw(PARAMS[name])
        attempt(self.cleaner, lambda: self.cleaner.set_params(**{name: value}))

    @rule(max_issues=st.one_of(st.none(), st.integers(1, 5), BAD_VALUES))
    def label_issues(self, max_issues):
        before = state_of(self.cleaner)
        table = attempt(self.cleaner, lambda: self.cleaner.label_issues(max_issues))
        assert_same_state(before, state_of(self.cleaner))  # a review changes nothing, even when it succeeds
        if table is not FAILED:
            assert max_issues is None or len(table) <= max_issues
            assert all(0 <= i < len(self.expected) for i in table.index)
            assert list(table["given_label"]) == [self.expected[i] for i in table.index]

    @rule(data=datasets(), keep=st.booleans())
    def fit(self, data, keep):
        X_, y = (X[:30], NOISY[:30]) if keep else data
        result = attempt(self.cleaner, lambda: self.cleaner.fit(X_, y))
        if result is not FAILED:
            self.expected = list(np.asarray(y))
            self.audit = None  # its queries are an earlier fit's: answering them is refused

    @rule()
    def save_and_load(self):
        path = os.path.join(self.folder.name, "checkpoint")
        self.cleaner.save(path)
        loaded = Cleaner.load(path, make_model(self.kind))
        mine, theirs = state_of(self.cleaner), state_of(loaded)
        mine["loops"], theirs["loops"] = mine["loops"][:1], theirs["loops"][:1]  # folds of an audit are not kept
        assert_same_state(mine, theirs)
        self.cleaner, self.audit = loaded, None

    # ------------------------------------------------------------------- invariants
    @invariant()
    def labels_change_only_through_answers(self):
        cleaner = self.cleaner
        assert len(cleaner.X_) == len(cleaner.labels_) == len(self.expected)
        assert list(cleaner.labels_) == self.expected  # so the noise in D moved only by the annotator's answers

    @invariant()
    def one_decision_per_query_and_indices_inside_the_pool(self):
        cleaner = self.cleaner
        n = len(cleaner.X_)
        known = cleaner.loop_.known
        assert len(set(known.tolist())) == len(known) and set(known.tolist()) <= set(range(n))
        assert set(cleaner.loop_.checked.tolist()) <= set(range(n))
        answered = [h["query"] for h in cleaner.history_]
        assert len(answered) == len(set(answered)) and not set(answered) & set(cleaner.pending_)
        for qid in [*answered, *cleaner.pending_]:
            assert QUERY_ID.match(qid) and qid.startswith(cleaner.uid_) and int(qid.split(":")[1]) < cleaner.n_queries_
        for query in cleaner.pending_.values():
            assert 0 <= query.index < n and all(0 <= int(i) < n for i in query.counterexamples)


TestCleanerSessions = CleanerMachine.TestCase
TestCleanerSessions.settings = settings(PROFILE, max_examples=max(4, PROFILE.max_examples // 2))


def test_the_profiles_are_documented():
    """The default run stays small (CI); the long one is a documented environment variable."""
    assert settings.get_profile("ci").max_examples <= 30 and settings.get_profile("long").max_examples >= 300
    assert "HYPOTHESIS_PROFILE=long" in (__doc__ or "")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
