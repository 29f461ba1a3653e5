"""The trained weights shipped in datasets/weights/ (the README's full-MNIST results come from them).

``datasets/weights/manifest.json`` records, per file, the architecture, how it was trained and what it
measured on the 10,000 MNIST test images.  These tests re-measure clean accuracy and Box-certified
accuracy on the shipped mnist-mini test images (drawn from the same MNIST test set) and fail when a
file is corrupt, belongs to another architecture, or no longer reproduces its recorded numbers.
"""
from __future__ import annotations

import json
import pathlib

import pytest

import refcert
from refcert import datasets, models
from refcert.certify import certify

WEIGHTS = pathlib.Path(__file__).resolve().parent.parent / "datasets" / "weights"
MANIFEST = json.loads((WEIGHTS / "manifest.json").read_text()) if (WEIGHTS / "manifest.json").exists() else {}
N = 300          # test images; binomial standard error ≤ 2.9 points, so the 8-point slack is > 2.7 σ
SLACK = 0.08


@pytest.fixture(scope="module")
def test_images():
    x, y = datasets.load("mnist-mini", "test")
    return x[:N], y[:N]


def test_manifest_lists_every_shipped_file():
    assert MANIFEST, "datasets/weights/manifest.json is missing or empty"
    assert sorted(MANIFEST) == sorted(p.name for p in WEIGHTS.glob("*.npz"))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_shipped_net_reproduces_its_recorded_accuracy(name, test_images):
    entry = MANIFEST[name]
    net = refcert.load(WEIGHTS / name)
    fresh = models.get(entry["model"], "mnist", seed=0)
    shapes = {k: tuple(v.shape) for k, v in net.named_parameters().items()}
    assert shapes == {k: tuple(v.shape) for k, v in fresh.named_parameters().items()}, "not a " + entry["model"]
    x, y = test_images
    result = certify(net, x, y, entry["eps"], domain="box", attack=False, batch_size=100)
    recorded = entry["results"]
    assert result.accuracy >= recorded["clean"] - SLACK, (result.accuracy, recorded["clean"])
    box_verified = result.fraction("verified")
    assert box_verified <= result.accuracy + 1e-12
    assert abs(box_verified - recorded["box"]) <= SLACK, (box_verified, recorded["box"])
