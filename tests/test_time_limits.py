"""Time limits hold within 5 %, start-up included (issue 12): ``refcert verify --timeout T`` prints its
answer by 1.05 T of wall clock measured around the process, on instances that cannot finish in T (the
exact MILP of a net with hundreds of ReLUs, HiGHS's un-interruptible set-up of a big model, a DeepPoly
pass over a big net); ``verify(deadline=)`` holds in the library; bad limits are refused."""
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from refcert import nn
from refcert.verify import verify

pytest.importorskip("onnx")
pytest.importorskip("scipy")

SLACK = 1.05  # the requirement: answer within 5 % of the limit


def _net(n_in, hidden, layers, seed=0):
    rng = np.random.default_rng(seed)
    modules, width = [], n_in
    for _ in range(layers):
        modules += [nn.Linear(width, hidden, rng=rng), nn.ReLU()]
        width = hidden
    return nn.Sequential(*modules, nn.Linear(width, 10, rng=rng))


def _robustness(net, n_in, eps, seed=0):
    """Unsafe: some class j reaches the predicted class c in the eps-box around a random point (one box,
    nine disjuncts).  The sizes below leave disjuncts that neither the domains nor PGD decide."""
    x0 = np.random.default_rng(seed + 1).random(n_in)
    with np.errstate(all="ignore"):
        c = int(np.argmax(net.astype("float64")(x0[None]).numpy()[0]))
    specs = [((np.eye(10)[c] - np.eye(10)[j])[None], np.zeros(1)) for j in range(10) if j != c]
    return [(x0 - eps, x0 + eps, specs)]


def _files(tmp_path, n_in, hidden, layers, eps):
    from refcert.io.onnx import export_onnx
    from refcert.io.vnnlib import write_vnnlib
    net = _net(n_in, hidden, layers)
    export_onnx(net, tmp_path / "net.onnx", input_shape=(1, n_in))
    write_vnnlib(tmp_path / "prop.vnnlib", _robustness(net, n_in, eps))
    return str(tmp_path / "net.onnx"), str(tmp_path / "prop.vnnlib")


# (inputs, hidden, layers, eps, T): the MILP of 900 ReLUs; HiGHS's set-up of a 3-million-nonzero model
# (seconds past its time_limit)
CASES = {"milp": (100, 300, 3, 0.02, 4.0), "highs-setup": (784, 500, 3, 0.004, 4.0)}


@pytest.mark.parametrize("case", CASES)
def test_cli_verify_answers_by_the_timeout_startup_included(tmp_path, case):
    n_in, hidden, layers, eps, T = CASES[case]
    net, prop = _files(tmp_path, n_in, hidden, layers, eps)
    argv = [sys.executable, "-m", "refcert.cli", "verify", net, prop, "--complete", "--timeout", str(T)]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "timeout", done.stdout
    assert wall <= SLACK * T, f"answered after {wall:.2f} s with --timeout {T}: {done.stdout}"


def test_library_deadline_holds_and_timeout_counts_from_the_call():
    net = _net(100, 300, 3)
    disjuncts = _robustness(net, 100, 0.02)
    deadline = time.monotonic() + 2.0
    outcome = verify(net, disjuncts, complete=True, deadline=deadline)
    late = time.monotonic() - deadline
    assert outcome.status == "timeout" and late <= (SLACK - 1) * 2.0, (outcome, late)
    start = time.monotonic()  # the earlier of timeout and deadline wins
    assert verify(net, disjuncts, complete=True, timeout=1.0, deadline=start + 60).status == "timeout"
    assert time.monotonic() - start <= SLACK * 1.0
    assert verify(net, disjuncts, deadline=time.monotonic() - 1).status == "timeout"  # already past


def test_a_domain_pass_over_a_big_net_stops_between_layers():
    """DeepPoly on 784-1000x10 takes seconds, its late layers 0.1-0.7 s each: the pass gives up before a
    layer that would likely end past the deadline."""
    net = _net(784, 1000, 10)
    disjuncts = _robustness(net, 784, 0.002)
    T, start = 1.5, time.monotonic()
    outcome = verify(net, disjuncts, domains=("deeppoly",), timeout=T)
    elapsed = time.monotonic() - start
    if outcome.status != "timeout":
        pytest.skip(f"this machine finished the DeepPoly pass within {T} s ({outcome.status})")
    assert elapsed <= SLACK * T and "deeppoly" in outcome.message, (elapsed, outcome)


@pytest.mark.parametrize("bad", [math.nan, -1.0])
def test_bad_time_limits_are_refused(bad):
    net = _net(4, 8, 1)
    disjuncts = _robustness(net, 4, 0.1)
    with pytest.raises(ValueError, match="timeout"):
        verify(net, disjuncts, timeout=bad)
    with pytest.raises(ValueError, match="deadline"):
        verify(net, disjuncts, deadline=math.nan)


def test_milp_search_is_abandoned_at_its_deadline():
    """HiGHS overruns its time_limit by seconds while it sets up a big model; find_violation(deadline=)
    runs it in a child process that is killed then."""
    from refcert.exact import ExactUndecided, find_violation
    net = _net(784, 500, 3).astype("float64")
    (lower, upper, specs), = _robustness(net, 784, 0.004)
    C, d = specs[0]
    start = time.monotonic()
    with pytest.raises(ExactUndecided, match="time"):
        find_violation(net, lower[None], upper[None], C, d, time_limit=60, deadline=start + 1.5)
    assert time.monotonic() - start <= SLACK * 1.5
