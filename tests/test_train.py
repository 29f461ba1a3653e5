"""refcert.train: certified training certifies more, losses bound the truth, runs resume exactly."""
import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refcert
from refcert import autodiff as ad
from refcert import datasets, domains, models, nn, spec
from refcert.autodiff import Tensor
from refcert.certify import certify
from refcert.checkpoint import load_checkpoint
from refcert.cli import main as cli
from refcert.train import TrainConfig, abstract_loss, make_optimizer, schedule, train


@pytest.fixture(scope="module")
def mini():
    x, y = datasets.load("mnist-mini", "train")
    x_test, y_test = datasets.load("mnist-mini", "test")
    return x, y, x_test, y_test


def weights(net):
    return {k: v.numpy().copy() for k, v in net.named_parameters().items()}


def test_diffai_certifies_strictly_more_than_standard(mini):
    x, y, x_test, y_test = mini
    verified = {}
    for method in ("standard", "diffai"):
        net = models.get("convtiny", "mnist", seed=0)
        config = TrainConfig(method=method, domain="box", eps=0.1, epochs=3, batch_size=50, kappa=0.8,
                             ramp_epochs=1.5, seed=0)
        train(net, x[:2000], y[:2000], config, progress=False)
        result = certify(net, x_test[:100], y_test[:100], 0.1, domain="box", attack=False)
        verified[method] = result.verdicts.count("verified")
    assert verified["diffai"] > verified["standard"]
    assert verified["diffai"] >= 20, verified  # not just one constant class (10 of 100)


@settings(max_examples=15)
@given(seed=st.integers(0, 10**6), eps=st.floats(0.0, 0.2), form=st.sampled_from(["ce", "margin"]))
def test_abstract_loss_bounds_the_loss_of_every_point(seed, eps, form):
    """CE over the worst-case logits >= CE at any point of the set (DiffAI, Sec. 4), and the 'ce' form
    equals the cross-entropy of spec.worst_case_logits."""
    rng = np.random.default_rng(seed)
    net = models.get("ffnn-small", "mnist", seed=seed, dtype="float64")
    x = rng.uniform(0, 1, (3, 1, 28, 28))
    labels = rng.integers(0, 10, 3)
    element = domains.get("box").linf_ball(x, eps)
    lower = spec.margin_bounds(net, element, labels)
    bound = abstract_loss(lower, "ce").numpy()
    assert np.isclose(bound, ad.cross_entropy(spec.worst_case_logits(net, element, labels), labels).numpy())
    for _ in range(5):
        point = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1)
        logits = net(point)
        assert ad.cross_entropy(logits, labels).numpy() <= bound + 1e-9
        if form == "margin":  # softplus(max_j -(y_t - y_j)) at the point <= the abstract margin loss
            true_margin = spec.margin_bounds(net, Tensor(point), labels)
            assert abstract_loss(true_margin, "margin").numpy() <= abstract_loss(lower, "margin").numpy() + 1e-9


class Stop(Exception):
    pass


@pytest.mark.parametrize("method,optimizer,model", [("pgd", "adam", "convtiny"), ("diffai", "sgd", "convtiny"),
                                                    ("diffai", "adam", "convtiny-bn")])
def test_killed_and_resumed_run_ends_with_the_same_weights(mini, tmp_path, method, optimizer, model):
    x, y = mini[0][:150], mini[1][:150]
    config = TrainConfig(method=method, domain="box", eps=0.1, epochs=3, batch_size=50, optimizer=optimizer,
                         ramp_epochs=2, lr_step=2, pgd_steps=2, seed=5)
    whole = models.get(model, seed=1)
    train(whole, x, y, config, out=tmp_path / "a", progress=False)

    def kill_after_first_epoch(row):
        if row["epoch"] == 1:
            raise Stop
    part = models.get(model, seed=1)
    with pytest.raises(Stop):
        train(part, x, y, config, out=tmp_path / "b", progress=False, callback=kill_after_first_epoch)
    resumed = models.get(model, seed=99)  # a fresh process would start from other weights
    train(resumed, x, y, config, out=tmp_path / "b", resume=True, progress=False)
    expected, got = weights(whole), weights(resumed)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    assert np.array_equal(weights(refcert.load(tmp_path / "b" / "model.npz"))["1.weight"], expected["1.weight"])
    with open(tmp_path / "b" / "metrics.csv") as stream:
        assert [int(r["epoch"]) for r in csv.DictReader(stream)] == [1, 2, 3]


def test_every_epoch_writes_a_flushed_metrics_row(mini, tmp_path):
    seen = []

    def check(row):  # the row is on disk by the time the epoch ends
        with open(tmp_path / "metrics.csv") as stream:
            seen.append([int(r["epoch"]) for r in csv.DictReader(stream)])
    train(models.get("convtiny"), mini[0][:100], mini[1][:100], TrainConfig(epochs=3, batch_size=50),
          out=tmp_path, progress=False, callback=check)
    assert seen == [[1], [1, 2], [1, 2, 3]]


@pytest.mark.parametrize("failing", ["model", "checkpoint"])
def test_crash_while_writing_leaves_the_previous_checkpoint(mini, tmp_path, monkeypatch, failing):
    x, y = mini[0][:100], mini[1][:100]
    net = models.get("convtiny")
    config = TrainConfig(epochs=1, batch_size=50)
    train(net, x, y, config, out=tmp_path, progress=False)
    after_one = weights(net)
    real_savez = np.savez

    def crashing_savez(stream, **arrays):  # write half a file, then die
        if failing == "model" or "meta" in arrays:
            stream.write(b"PK\x03\x04 half a zip")
            raise OSError("disk full (simulated)")
        real_savez(stream, **arrays)
    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="simulated"):
        train(net, x, y, TrainConfig(epochs=2, batch_size=50), out=tmp_path, resume=True, progress=False)
    monkeypatch.setattr(np, "savez", real_savez)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.csv", "model.npz"]
    fresh = models.get("convtiny", seed=7)
    _, epochs = load_checkpoint(tmp_path / "checkpoint.npz", fresh, make_optimizer(fresh, config),
                                np.random.default_rng())
    assert epochs == 1 and all(np.array_equal(after_one[k], v) for k, v in weights(fresh).items())


def test_bad_settings_fail_clearly(mini, tmp_path):
    with pytest.raises(ValueError, match="unknown training method"):
        TrainConfig(method="ibp").check()
    with pytest.raises(ValueError, match="unknown domain"):
        TrainConfig(method="diffai", domain="octagon").check()
    with pytest.raises(ValueError, match="kappa"):
        TrainConfig(kappa=1.5).check()
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="cosine").check()
    with pytest.raises(ValueError, match="ramp_start"):
        TrainConfig(ramp_start=-1).check()
    train(models.get("convtiny"), mini[0][:50], mini[1][:50], TrainConfig(epochs=1, batch_size=50), out=tmp_path,
          progress=False)
    with pytest.raises(ValueError, match="cannot resume with different settings.*eps"):
        train(models.get("convtiny"), mini[0][:50], mini[1][:50], TrainConfig(epochs=2, eps=0.3), out=tmp_path,
              resume=True, progress=False)


def test_cli_train_writes_a_certifiable_model(tmp_path, capsys):
    code = cli(["train", "--model", "convtiny", "--data", "mnist-mini", "--limit", "100", "--epochs", "1",
                "--method", "diffai", "--domain", "box", "--out", str(tmp_path), "--quiet"])
    assert code == 0 and "test accuracy" in capsys.readouterr().out
    assert refcert.load(tmp_path / "model.npz")(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
    code = cli(["train", "--model", "convtiny", "--limit", "100", "--epochs", "2", "--method", "diffai",
                "--domain", "box", "--eps", "0.3", "--out", str(tmp_path), "--resume", "--quiet"])
    assert code == 1 and "cannot resume with different settings" in capsys.readouterr().err


def test_cli_init_starts_from_the_given_weights(tmp_path, capsys):
    """--init: an epoch at a negligible learning rate keeps the given weights (not the seed's); another
    architecture is refused, naming --init."""
    from refcert import models
    source = models.get("convtiny", seed=7)
    refcert.save(source, tmp_path / "start.npz")
    code = cli(["train", "--model", "convtiny", "--limit", "50", "--epochs", "1", "--lr", "1e-12", "--init", str(tmp_path / "start.npz"),
                "--out", str(tmp_path / "a"), "--quiet"])
    assert code == 0
    trained = refcert.load(tmp_path / "a" / "model.npz").named_parameters()
    for name, tensor in source.named_parameters().items():
        np.testing.assert_allclose(trained[name].numpy(), tensor.numpy(), rtol=0, atol=1e-9)
    code = cli(["train", "--model", "ffnn-small", "--limit", "50", "--epochs", "1", "--init",
                str(tmp_path / "start.npz"), "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 1 and "--init" in capsys.readouterr().err


@pytest.mark.usefixtures("plain")  # training bounds are plain (TrainConfig.sound)
def test_crown_ibp_mixes_bounds_and_ends_as_ibp(mini):
    """beta = 1 - ramp: at the end of the ramp the abstract part is pure IBP (Box) bounds (CROWN-IBP, Eq. 9)."""
    from refcert.train import batch_loss
    net = models.get("ffnn-small", seed=2)
    x, y = mini[0][:8], mini[1][:8]
    config = TrainConfig(method="crown-ibp", eps=0.05, kappa=1.0)
    ibp = abstract_loss(spec.margin_bounds(net, domains.get("box").linf_ball(x, 0.05), y), "ce").numpy()
    crown = abstract_loss(spec.margin_bounds(net, domains.get("crown-ibp").linf_ball(x, 0.05), y), "ce").numpy()
    assert np.isclose(batch_loss(net, x, y, config, 1.0, None)[0].numpy(), ibp, rtol=1e-5)
    assert crown <= ibp + 1e-5  # back-substitution through the last layer is never looser than Box
    loss, _ = batch_loss(net, x, y, config, 0.5, None)  # eps, kappa and 1 - beta are all halfway
    half = [spec.margin_bounds(net, domains.get(d).linf_ball(x, 0.025), y) for d in ("crown-ibp", "box")]
    expected = 0.5 * ad.cross_entropy(net(x), y).numpy() + 0.5 * abstract_loss(0.5 * half[0] + 0.5 * half[1], "ce").numpy()
    assert np.isclose(loss.numpy(), expected, rtol=1e-5)


def test_ramp_schedules():
    """linear: t; smooth (Shi et al.): 0 before ramp_start, then a·(t/m)^4 meeting the linear part at the knee
    with the same value and slope, non-decreasing, 1 at the end of the ramp."""
    per = 100
    linear = TrainConfig(ramp_epochs=2)
    assert [schedule(linear, s, per) for s in (1, 100, 200, 300)] == [0.005, 0.5, 1.0, 1.0]
    smooth = TrainConfig(ramp_epochs=4, ramp_start=1, schedule="smooth")
    values = np.array([schedule(smooth, s, per) for s in range(0, 700)])
    assert np.all(values[:101] == 0) and values[101] > 0 and np.all(values[500:] == 1.0)
    assert np.all(np.diff(values) >= 0)
    knee = 100 + 0.25 * 400  # step at the knee
    slope = lambda a, b: (schedule(smooth, b, per) - schedule(smooth, a, per)) / (b - a)
    assert schedule(smooth, knee, per) == pytest.approx(1 / 13)
    assert slope(knee - 1e-3, knee) == pytest.approx(slope(knee, knee + 1e-3), rel=1e-3)
    assert schedule(smooth, 150, per) < 0.01 < schedule(linear, 50, per)  # tiny eps early in the ramp


def test_batchnorm_network_trains_in_training_mode_and_ends_in_evaluation_mode(mini, tmp_path):
    """Every batch is normalised with its own statistics (the running ones move), the abstract loss uses the
    clean batch's, and the returned and saved network is in evaluation mode with its running statistics."""
    x, y = mini[0][:200], mini[1][:200]
    net = models.get("convtiny-bn", seed=2)
    norms = [layer for layer in net.layers if isinstance(layer, nn.BatchNorm)]
    seen = []
    original = nn.BatchNorm.arguments

    def spy(self, x):
        seen.append((self.training, hasattr(x, "domain")))
        return original(self, x)
    nn.BatchNorm.arguments = spy
    try:
        train(net, x, y, TrainConfig(method="diffai", eps=0.1, epochs=1, batch_size=50, ramp_epochs=1),
              out=tmp_path, progress=False)
    finally:
        nn.BatchNorm.arguments = original
    assert (True, False) in seen and (True, True) in seen  # clean batches and abstract elements, in training mode
    assert all(not layer.training for layer in norms)
    assert all(np.any(layer.params["running_mean"].numpy() != 0) for layer in norms)
    saved = refcert.load(tmp_path / "model.npz")
    probe = mini[2][:8]
    assert np.array_equal(saved(probe).numpy(), net(probe).numpy())
    box = net(domains.get("box").linf_ball(probe, 0.0))
    assert np.all(box.lower.numpy() <= net(probe).numpy()) and np.all(net(probe).numpy() <= box.upper.numpy())
