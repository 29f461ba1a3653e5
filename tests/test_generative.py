"""refcert.generative (piecewise-linear autoencoder) and ``refcert certify-path``."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refcert
from refcert import cli
from refcert import generative as g
from refcert.autodiff import Tensor
from refcert.commands.certify_path import certify_paths, summary
from refcert.segment import SEGMENT_DOMAINS

SPECS = [("exactline", "exactline", None), ("approxline:2", "approxline", 2), ("approxline:50", "approxline", 50),
         ("box", "box", None), ("deepzono", "deepzono", None)]
SPECS = [s for s in SPECS if s[1] in refcert.domains.names() and s[1] in SEGMENT_DOMAINS]


def _images(n=256, seed=0):
    """Real MNIST images when the shipped subset loads, else blurry synthetic strokes in [0, 1]."""
    try:
        x, _ = refcert.datasets.load("mnist-mini", "train")
        return x[np.random.default_rng(seed).permutation(len(x))[:n]]
    except Exception:  # noqa: BLE001  (any loader problem: the test does not need real digits)
        rng = np.random.default_rng(seed)
        x = np.zeros((n, 1, 28, 28), np.float32)
        for k in range(n):
            r, c = rng.integers(4, 20, 2)
            x[k, 0, r:r + 8, c:c + 3] = 1.0
        return x


def _tiny(seed, image_size=6, latent=2, classes=3):
    enc, dec = g.autoencoder(latent, 4, image_size=image_size, seed=seed, dtype="float64")
    clf = g.classifier(5, classes, image_size=image_size, seed=seed + 1, dtype="float64")
    rng = np.random.default_rng(seed)
    for layer in dec.layers[:1] + clf.layers[1:]:  # larger weights: more class changes along paths
        if getattr(layer, "op", None) == "linear":
            layer.params["weight"] = Tensor(3 * layer.weight.numpy(), requires_grad=True)
    dec.layers[-3].params["bias"] = Tensor(dec.layers[-3].bias.numpy() + rng.uniform(0, 1), requires_grad=True)
    return enc, dec, clf


def test_autoencoder_trains_and_head_stays_a_hard_sigmoid():
    x = _images()
    enc, dec = g.autoencoder(8, 32, seed=0)
    before = g.reconstruction_loss(x, enc, dec)
    history = g.train_autoencoder(x, enc, dec, epochs=12, lr=3e-3, batch_size=32, seed=0)
    after = g.reconstruction_loss(x, enc, dec)
    assert after < before / 2, f"reconstruction loss {before:.4f} -> {after:.4f}"
    assert history[-1] < history[0]
    # the decoder is still exactly clip(W h + b, 0, 1) with the head's top half
    z = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32) * 3
    h = refcert.interpret.run(dec.layers[:-3], Tensor(z)).numpy()
    W, b = dec.layers[-3].weight.numpy()[:784], dec.layers[-3].bias.numpy()[:784]
    expected = np.clip(h @ W.T + b, 0, 1)
    out = dec(z).numpy()
    assert np.allclose(out, expected, atol=1e-5) and out.min() >= -1e-5 and out.max() <= 1 + 1e-5
    enc2, dec2 = g.autoencoder(8, 32, seed=0)  # seeded: the same run gives the same loss curve
    assert g.train_autoencoder(x, enc2, dec2, epochs=12, lr=3e-3, batch_size=32, seed=0) == history


@given(st.integers(0, 2**16))
@settings(max_examples=15)
def test_compose_equals_decoder_then_classifier(seed):
    enc, dec, clf = _tiny(seed)
    z = np.random.default_rng(seed).normal(size=(7, 2)) * 3
    assert np.allclose(g.compose(dec, clf)(z).numpy(), clf(dec(z)).numpy(), rtol=0, atol=1e-12)
    assert np.allclose(dec(z).numpy(), np.clip(dec(z).numpy(), 0, 1))


@given(st.integers(0, 2**16), st.floats(0.1, 6.0))
@settings(max_examples=25)
def test_certified_paths_survive_dense_sampling(seed, scale):
    enc, dec, clf = _tiny(seed)
    net = g.compose(dec, clf)
    rng = np.random.default_rng(seed)
    z_from = rng.normal(size=(3, 2)) * scale
    z_to = z_from + rng.normal(size=(3, 2)) * scale
    labels = net(z_from).numpy().argmax(axis=1)
    results = certify_paths(net, z_from, z_to, labels, SPECS, skip_unsupported=True)
    t = np.concatenate([[0.0, 1.0], np.linspace(0, 1, 1001), rng.uniform(0, 1, 500)])
    for p in range(3):
        y = net(z_from[p][None] + t[:, None] * (z_to[p] - z_from[p])[None]).numpy().argmax(axis=1)
        on_label = float(np.mean(y[2:1003] == labels[p]))
        for key, res in results.items():
            r = res[p]
            if np.any(y != labels[p]):
                assert r.verdict != "verified", f"{key} certified a path on which sampling finds another class"
            if r.verdict == "falsified":
                assert net(r.counterexample[None]).numpy().argmax() != labels[p]
            if r.fractions_lower is not None:  # the sampled label fraction lies in the certified interval
                assert r.fractions_lower[labels[p]] - 0.01 <= on_label <= r.fractions_upper[labels[p]] + 0.01
        if "exactline" in results:  # complete on piecewise-linear nets
            assert results["exactline"][p].verdict == ("verified" if np.all(y == labels[p]) else "falsified") \
                or abs(results["exactline"][p].margin) < 1e-9
    for res in results.values():
        s = summary(res)
        assert s["certified"] + s["falsified"] + s["unknown"] == s["paths"] == 3


def test_flip_horizontal_is_an_involution_that_flips_columns():
    x = np.random.default_rng(0).uniform(size=(4, 1, 5, 7))
    f = g.flip_horizontal(x)
    assert np.array_equal(g.flip_horizontal(f), x)
    for c in range(7):
        assert np.array_equal(f[..., c], x[..., 6 - c])
    assert not np.shares_memory(f, x)
    with pytest.raises(ValueError, match="shape"):
        g.flip_horizontal(np.zeros(3))


def _saved(tmp_path, seed=3, latent=2):
    enc, dec, clf = _tiny(seed, latent=latent)
    paths = {k: str(tmp_path / f"{k}.npz") for k in ("enc", "dec", "net")}
    for k, net in zip(("enc", "dec", "net"), (enc, dec, clf)):
        refcert.save(net, paths[k])
    x = np.random.default_rng(seed).uniform(size=(40, 1, 2, 3))
    y = g.compose(dec, clf)(enc(x)).numpy().argmax(axis=1)  # labels the endpoints already get
    paths["inputs"] = str(tmp_path / "inputs.npz")
    np.savez(paths["inputs"], x=x, y=y)
    return paths


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    p = _saved(tmp_path)
    out_json = str(tmp_path / "paths.json")
    argv = ["certify-path", "--encoder", p["enc"], "--decoder", p["dec"], "--classifier", p["net"],
            "--inputs", p["inputs"], "--pairs", "3", "--flip-pairs", "2", "--domain", "exactline",
            "--domain", "approxline:4", "--domain", "box", "--json", out_json]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    for word in ("domain", "certified", "falsified", "unknown", "exactline", "approxline:4", "box"):
        assert word in text
    doc = json.loads(open(out_json).read())
    n = len(doc["paths"])
    assert 3 <= n <= 5 and {path["kind"] for path in doc["paths"]} <= {"class", "flip"}
    for key in ("exactline", "approxline:4", "box"):
        s = doc["summary"][key]
        assert s["paths"] == n and s["certified"] + s["falsified"] + s["unknown"] == n
        assert all(path["domains"][key]["verdict"] in ("verified", "falsified", "unknown") for path in doc["paths"])
    exact = [path["domains"]["exactline"] for path in doc["paths"]]
    assert all(e["fraction_lower"] == e["fraction_upper"] for e in exact)
    assert cli.main(argv[:-2] + ["--plot", str(tmp_path / "p.png")]) == 0  # plot or a clear skip note
    assert "plot" in capsys.readouterr().out.lower() or (tmp_path / "p.png").exists()


def test_cli_bad_inputs_give_one_line_errors(tmp_path, capsys):
    p = _saved(tmp_path)
    refcert.save(_tiny(5, latent=3)[0], str(tmp_path / "enc3.npz"))  # an encoder with latent size 3
    base = ["certify-path", "--decoder", p["dec"], "--classifier", p["net"], "--inputs", p["inputs"]]
    cases = [(base + ["--encoder", str(tmp_path / "missing.npz")], "no such"),
             (base + ["--encoder", str(tmp_path / "enc3.npz")], "latent size mismatch"),
             (["certify-path", "--decoder", p["dec"], "--classifier", p["net"], "--encoder", p["enc"],
               "--inputs", str(tmp_path / "nope.npz")], "no such"),
             (base, "without --encoder"),
             (base + ["--encoder", p["enc"], "--domain", "polyhedra"], "unknown path domain")]
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_model_zoo_reexports_the_generative_models():
    """``refcert.models`` serves the autoencoder (issue 7); its decoder is ReLU-only, so ExactLine accepts it."""
    from refcert import models
    enc, dec = models.autoencoder(2, 6, image_size=6, seed=3, dtype="float64")
    clf = models.mlp_classifier(5, 3, image_size=6, seed=4, dtype="float64")
    net = models.compose(dec, clf)
    assert {layer.op for layer in dec.layers if hasattr(layer, "op")} <= {"linear", "relu", "flatten"}
    z = np.random.default_rng(0).normal(size=(2, 2)) * 3
    result = refcert.segment.certify_segment(net, z[0], z[1], 0, domain="exactline")
    assert abs(result.fractions_lower.sum() - 1) < 1e-9
    assert np.array_equal(result.fractions_lower, result.fractions_upper)   # exact: decoder is piecewise linear
    assert np.array_equal(models.flip_horizontal(models.flip_horizontal(_images(4))), _images(4))
