"""VNN-LIB reading/writing and VNN-COMP result files."""
import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert.io.vnnlib import VnnlibError, read_result, read_vnnlib, write_result, write_vnnlib
from tests.conftest import shared_file


def _mnist_test_set():
    with gzip.open(shared_file("datasets/mnist/t10k-images-idx3-ubyte.gz"), "rb") as stream:
        images = np.frombuffer(stream.read(), dtype=np.uint8)[16:].reshape(-1, 784).astype(np.float64) / 255.0
    with gzip.open(shared_file("datasets/mnist/t10k-labels-idx1-ubyte.gz"), "rb") as stream:
        labels = np.frombuffer(stream.read(), dtype=np.uint8)[8:]
    return images, labels


def test_mnistfc_property_is_an_eps_ball_and_nine_disjuncts():
    """VNN-COMP 2021 mnistfc prop_0: eps = 0.03 around an MNIST test image (clipped to [0, 1]), unsafe if
    any other logit reaches the label's."""
    disjuncts = read_vnnlib(shared_file("networks/vnncomp2021__mnistfc_prop_0_0.03.vnnlib"))
    assert len(disjuncts) == 1
    lower, upper, specs = disjuncts[0]
    assert lower.shape == upper.shape == (784,)
    images, labels = _mnist_test_set()
    eps = 0.03
    mismatch = (np.abs(np.clip(images - eps, 0, 1) - lower).max(axis=1)
                + np.abs(np.clip(images + eps, 0, 1) - upper).max(axis=1))
    index = int(np.argmin(mismatch))
    assert mismatch[index] < 1e-6                      # some test image (it is #8661) is the centre
    rows = [C for C, d in specs]
    assert len(rows) == 9 and all(C.shape == (1, 10) for C in rows) and all(np.all(d == 0) for _, d in specs)
    label = int(np.flatnonzero(rows[0][0] == 1)[0])   # every row reads y_label - y_j <= 0
    assert label == labels[index] == 8                 # "; Mnist property with label: 8."
    others = sorted(int(np.flatnonzero(C[0] == -1)[0]) for C in rows)
    assert others == [j for j in range(10) if j != label]
    assert all(C[0, label] == 1 and C.sum() == 0 and np.abs(C).sum() == 2 for C in rows)


def _random_property(rng, n_in, n_out, boxes, specs):
    result = []
    for _ in range(boxes):
        lower = rng.uniform(-1, 1, n_in)
        result.append((lower, lower + rng.uniform(0, 1, n_in),
                       [(rng.normal(size=(rng.integers(1, 3), n_out)).round(3), rng.normal(size=rng.integers(1, 3)))
                        for _ in range(specs)]))
    return [(lo, hi, [(C[:min(len(C), len(d))], d[:min(len(C), len(d))]) for C, d in s]) for lo, hi, s in result]


@settings(max_examples=20)
@given(st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_write_read_round_trip(tmp_path_factory, seed, n_in, n_out, boxes, specs):
    original = _random_property(np.random.default_rng(seed), n_in, n_out, boxes, specs)
    path = tmp_path_factory.mktemp("v") / "p.vnnlib"
    write_vnnlib(path, original, comment="round trip\nsecond line")
    again = read_vnnlib(path)
    assert len(again) == len(original)
    for (lo, hi, s), (lo2, hi2, s2) in zip(original, again):
        np.testing.assert_array_equal(lo, lo2)
        np.testing.assert_array_equal(hi, hi2)
        assert len(s) == len(s2)
        for (C, d), (C2, d2) in zip(s, s2):
            np.testing.assert_allclose(C2, C, rtol=1e-15)
            np.testing.assert_allclose(d2, d, rtol=1e-15)


def test_general_linear_terms_and_several_boxes(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text("""; two boxes
(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 -1) (<= X_1 0) (<= (+ (* 2 Y_0) (- Y_1)) 3))
            (and (>= X_0 2) (<= X_0 3.5) (> X_1 -1) (< X_1 0) (>= Y_0 (- 1.5)))))
(assert (<= Y_1 10))
""")
    (lo1, hi1, s1), (lo2, hi2, s2) = read_vnnlib(path)
    np.testing.assert_array_equal(lo1, [0, -1])
    np.testing.assert_array_equal(hi2, [3.5, 0])
    np.testing.assert_array_equal(s1[0][0], [[2, -1], [0, 1]])
    np.testing.assert_array_equal(s1[0][1], [3, 10])
    np.testing.assert_array_equal(s2[0][0], [[-1, 0], [0, 1]])
    np.testing.assert_array_equal(s2[0][1], [1.5, 10])


@pytest.mark.parametrize("text, where", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "2:1"),                    # never closed
    ("(declare-const X_0 Real))", "1:25"),                                       # extra ')'
    ("(declare-const X_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 foo))", "3:17"),   # undeclared
    ("(declare-const X_0 Real)\n  (assert (<= (* X_0 X_0) 1))", "2:16"),         # non-linear
    ("(declare-const X_0 Real)\n(assert (<= X_0 1))\n(frobnicate)", "3:2"),      # unknown command
    ("(declare-const Z Real)", "1:16"),                                          # bad variable name
])
def test_malformed_files_give_located_errors(tmp_path, text, where):
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    with pytest.raises(VnnlibError, match=f"bad.vnnlib:{where}"):
        read_vnnlib(path)


def test_unbounded_input_is_refused(tmp_path):
    path = tmp_path / "u.vnnlib"
    path.write_text("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (<= Y_0 0))")
    with pytest.raises(VnnlibError, match="X_0"):
        read_vnnlib(path)


def test_result_files(tmp_path):
    path = tmp_path / "r.txt"
    write_result(path, "sat", x=[0.1, 0.25], y=[1e-9, -3.0])
    status, x, y = read_result(path)
    assert status == "sat" and x.tolist() == [0.1, 0.25] and y.tolist() == [1e-9, -3.0]
    for status in ("unsat", "unknown", "timeout"):
        write_result(path, status)
        assert read_result(path) == (status, None, None)
    path.write_text("violated\n((X_0 1.0)\n (Y_0 2.0))")
    assert read_result(path)[0] == "sat"
    path.write_text("holds\n")
    assert read_result(path)[0] == "unsat"
    path.write_text("sat\n((X_0 1.0)\n (Y_0 two))")
    with pytest.raises(VnnlibError, match="r.txt:3:7"):
        read_result(path)
    path.write_text("maybe")
    with pytest.raises(VnnlibError, match="r.txt:1:1"):
        read_result(path)


def test_zero_bounds_are_positive_zero_so_zero_width_boxes_sample(tmp_path):
    """(<= X_0 0.0) used to give the bound -0.0 (= -0.0/1), and numpy's uniform(0.0, -0.0) refuses."""
    path = tmp_path / "zero.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (<= X_0 0.0))\n(assert (>= X_0 0.0))\n(assert (<= Y_0 1.0))\n")
    [(lower, upper, _)] = read_vnnlib(path)
    assert lower[0] == 0.0 and upper[0] == 0.0
    assert not np.signbit(lower[0]) and not np.signbit(upper[0])
    np.random.default_rng(0).uniform(lower, upper)   # raises "high - low < 0" for a -0.0 upper bound
