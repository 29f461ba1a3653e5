"""refcert.geometric: the convention of DeepG's transformations, parsing, and the soundness of the interval
(a) and linear (b) bounds with zero tolerance, for the float64 output and for the real map (proofs/geometric.md)."""
from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcert import geometric as G

# --- strategies ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist():
    from refcert import datasets
    return datasets.load("mnist-mini", "test")[0][:50].astype(np.float64)


@st.composite
def images(draw, sizes=(8, 12)):
    """(C, H, W): uniform noise, smooth blobs, binary dots or a crop of a real MNIST digit, in [0, 1], sometimes
    scaled by −1 or 3 (the bounds hold for any image)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    H, W = draw(st.integers(*sizes)), draw(st.integers(*sizes))
    kind, C = draw(st.sampled_from(["uniform", "smooth", "binary", "mnist"])), draw(st.sampled_from([1, 1, 2]))
    if kind == "mnist":
        r, c = rng.integers(14 - H, 15), rng.integers(14 - W, 15)     # a crop that holds the digit's centre
        image = _mnist()[rng.integers(50)][:, r:r + H, c:c + W]
    elif kind == "uniform":
        image = rng.random((C, H, W))
    elif kind == "binary":
        image = (rng.random((C, H, W)) < 0.3).astype(np.float64)
    else:
        rows, cols = np.mgrid[:H, :W]
        centre, width = rng.uniform(0, [H, W], size=(C, 2)), rng.uniform(1.5, 4, size=(C, 1, 1))
        image = np.exp(-((rows - centre[:, :1, None]) ** 2 + (cols - centre[:, 1:, None]) ** 2) / width ** 2)
    return image * draw(st.sampled_from([1.0, 1.0, 1.0, -1.0, 3.0]))


@st.composite
def specs(draw):
    """A parsed composition of one to six transformations with random magnitudes, in random textual order."""
    parts = {"rotate": lambda: f"rotate:{draw(st.floats(0, 30)):.3g}",
             "translate": lambda: f"translate:{draw(st.floats(0, 2)):.3g},{draw(st.floats(0, 2)):.3g}",
             "scale": lambda: f"scale:{draw(st.floats(0.8, 1)):.3g},{draw(st.floats(1, 1.2)):.3g}",
             "shear": lambda: f"shear:{draw(st.floats(0, 0.3)):.3g}",
             "contrast": lambda: f"contrast:{draw(st.floats(0.7, 1)):.3g},{draw(st.floats(1, 1.3)):.3g}",
             "brightness": lambda: f"brightness:{draw(st.floats(0, 0.2)):.3g}"}
    kinds = draw(st.lists(st.sampled_from(sorted(parts)), min_size=1, max_size=6, unique=True))
    return G.parse("+".join(parts[k]() for k in kinds))


@st.composite
def cases(draw):
    """(image, spec, lower, upper, sample params (N, k): the piece's corners, its centre, random points)."""
    image, spec = draw(images()), draw(specs())
    splits = draw(st.integers(1, 3))
    lower, upper = G.pieces(spec, splits)
    i = draw(st.integers(0, len(lower) - 1))
    lo, hi = lower[i], upper[i]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    corners = np.where(np.indices((2,) * spec.k).reshape(spec.k, -1).T == 1, hi, lo)
    inside = lo + (hi - lo) * rng.random((24, spec.k))
    return image, spec, lo, hi, np.concatenate([corners, [(lo + hi) / 2], inside])


def linear_violations(y, p, A, b, c):
    """Pixels (n, i) with |y[n, i] − (A_i·p_n + b_i)| > c_i in exact arithmetic (float decides the clear ones)."""
    dev = np.abs(y - (p @ A.T + b))
    scale = np.abs(y) + np.abs(p) @ np.abs(A).T + np.abs(b)
    bad = []
    for n, i in zip(*np.nonzero(~(dev + 1e-9 * scale <= c))):
        exact = Fraction(y[n, i]) - sum(Fraction(a) * Fraction(x) for a, x in zip(A[i], p[n])) - Fraction(b[i])
        if abs(exact) > Fraction(c[i]):
            bad.append((n, i))
    return bad


# --- (a) and (b) contain the float64 transformation: zero tolerance --------------------------------------

@given(cases(), st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 1, 2]))
def test_bounds_contain_the_transformed_images(case, boxes, points):
    image, spec, lo, hi, p = case
    if ((boxes or 2) * (points or 2) + 1) ** spec.k > 2000:
        boxes = points = None                                      # the default grid: at most ~3000 points
    y = G.transform(image, spec, p)
    low, high = G.interval_bounds(image, spec, lo, hi)
    assert np.all(low <= y) and np.all(y <= high), f"{spec.text}: interval bound violated"
    A, b, c = G.linear_bounds(image, spec, lo, hi, boxes=boxes, points=points)
    assert A.shape == (image.size, spec.k) and b.shape == c.shape == (image.size,) and np.all(c >= 0)
    assert not linear_violations(y.reshape(len(p), -1), p, A, b, c), f"{spec.text}: linear bound violated"


def test_bounds_contain_wide_transformations_of_mnist_digits():
    """Whole 28 x 28 digits, large boxes (half turns, 8-pixel shifts, scale 0.3-3, negative contrast), coarse
    and default grids, 300 points per piece: zero tolerance."""
    rng = np.random.default_rng(5)
    texts = ["rotate:180", "translate:8,3+rotate:40", "scale:0.3,3+shear:1.5", "contrast:-1,2+rotate:25",
             "rotate:60+scale:0.5,1.5+brightness:0.5", "shear:1+translate:2"]
    for n, text in enumerate(texts * 2):
        spec, image = G.parse(text), _mnist()[n]
        lower, upper = G.pieces(spec, 1 + n % 3)
        lo, hi = lower[n % len(lower)], upper[n % len(lower)]
        p = lo + (hi - lo) * rng.random((300, spec.k))
        y = G.transform(image, spec, p)
        low, high = G.interval_bounds(image, spec, lo, hi)
        assert np.all(low <= y) and np.all(y <= high), text
        A, b, c = G.linear_bounds(image, spec, lo, hi, **({} if n < 6 else {"boxes": 1, "points": 2}))
        assert not linear_violations(y.reshape(len(p), -1), p, A, b, c), text


def test_batched_pieces_equal_single_pieces():
    image = np.random.default_rng(0).random((2, 9, 10))
    spec = G.parse("rotate:10+brightness:0.1")
    lower, upper = G.pieces(spec, 2)
    low, high = G.interval_bounds(image, spec, lower, upper)
    A, b, c = G.linear_bounds(image, spec, lower, upper, boxes=2, points=2)
    assert low.shape == (4, 2, 9, 10) and A.shape == (4, 180, 2)
    for i in range(4):
        single = G.interval_bounds(image, spec, lower[i], upper[i])
        assert np.array_equal(single[0], low[i]) and np.array_equal(single[1], high[i])
        single = G.linear_bounds(image, spec, lower[i], upper[i], boxes=2, points=2)
        assert all(np.array_equal(u, v[i]) for u, v in zip(single, (A, b, c)))


# --- the real-valued map: an independent high-precision reference ---------------------------------------

def exact_transform(image, spec, p, mp):
    """T_p(image) in 50-digit arithmetic from the forward matrix translate ∘ rotate ∘ scale ∘ shear, inverted."""
    g = {**{n: mp.mpf(v) for n, v in G.IDENTITY.items()}, **{n: mp.mpf(float(v)) for n, v in zip(spec.names, p)}}
    t = g["rotate"] * mp.pi / 180
    forward = (mp.matrix([[mp.cos(t), mp.sin(t)], [-mp.sin(t), mp.cos(t)]]) * (g["scale"] * mp.eye(2))
               * mp.matrix([[1, g["shear"]], [0, 1]]))
    inverse = forward ** -1
    C, H, W = image.shape
    cr, cc = mp.mpf(H - 1) / 2, mp.mpf(W - 1) / 2
    pixel = lambda ch, r, c: mp.mpf(float(image[ch, r, c])) if 0 <= r < H and 0 <= c < W else mp.mpf(0)
    out = np.empty(image.shape, dtype=object)
    for r in range(H):
        for c in range(W):
            x, y = inverse * mp.matrix([c - cc - g["dx"], r - cr - g["dy"]])
            row, col = cr + y, cc + x
            r0, c0 = int(mp.floor(row)), int(mp.floor(col))
            wr, wc = row - r0, col - c0
            for ch in range(C):
                v = ((1 - wr) * ((1 - wc) * pixel(ch, r0, c0) + wc * pixel(ch, r0, c0 + 1))
                     + wr * ((1 - wc) * pixel(ch, r0 + 1, c0) + wc * pixel(ch, r0 + 1, c0 + 1)))
                out[ch, r, c] = g["contrast"] * v + g["brightness"]
    return out


@settings(max_examples=12)
@given(cases())
def test_bounds_contain_the_real_transformation(case):
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 50
    image, spec, lo, hi, p = case
    image = image[:1, :6, :7]
    low, high = G.interval_bounds(image, spec, lo, hi)
    A, b, c = G.linear_bounds(image, spec, lo, hi, boxes=1, points=2)
    eps = G.float_error(image, spec, lo, hi)[0]
    for q in p[[0, -1, len(p) // 2]]:
        real = exact_transform(image, spec, q, mp).ravel()
        computed = G.transform(image, spec, q).ravel()
        linear = [sum(mp.mpf(a) * mp.mpf(float(x)) for a, x in zip(A[i], q)) + mp.mpf(b[i])
                  for i in range(len(real))]
        for i, v in enumerate(real):
            assert mp.mpf(low.ravel()[i]) <= v <= mp.mpf(high.ravel()[i])
            assert abs(v - linear[i]) <= mp.mpf(c[i])
            assert abs(v - mp.mpf(computed[i])) <= mp.mpf(eps)


# --- the convention -----------------------------------------------------------------------------------------

def test_zero_parameters_give_the_image_itself_exactly():
    image = np.random.default_rng(1).random((2, 7, 9))
    spec = G.parse("rotate:10+translate:1+scale:0.9,1.1+shear:0.1+contrast:0.9,1.1+brightness:0.1")
    identity = [G.IDENTITY[n] for n in spec.names]
    assert np.array_equal(G.transform(image, spec, identity), image)
    rot = G.parse("rotate:0")
    assert np.array_equal(G.transform(image, rot, [0.0]), image)
    _, b, c = G.linear_bounds(image, rot, rot.lower, rot.upper)       # a point: the linear bound is exact but
    assert np.array_equal(b, image.ravel()) and np.max(c) < 1e-11       # for the floating-point margins


@given(images(), st.integers(-3, 3), st.integers(-3, 3))
def test_whole_pixel_translation_is_a_shift_with_zeros(image, dx, dy):
    spec = G.parse("translate:3")
    expected = np.roll(image, (dy, dx), axis=(1, 2))
    H, W = image.shape[1:]
    expected[:, :dy] = 0 if dy > 0 else expected[:, :dy]
    expected[:, H + dy:] = 0 if dy < 0 else expected[:, H + dy:]
    expected[:, :, :dx] = 0 if dx > 0 else expected[:, :, :dx]
    expected[:, :, W + dx:] = 0 if dx < 0 else expected[:, :, W + dx:]
    assert np.array_equal(G.transform(image, spec, [dx, dy]), expected)


def _dot(shape, r, c):
    image = np.zeros(shape)
    image[0, r, c] = 1.0
    return image


@pytest.mark.parametrize("text, params, source, target", [
    ("rotate:90", [90], (3, 5), (1, 3)),                        # right of the centre -> above: counter-clockwise
    ("rotate:90+translate:1", [90, 1, 0], (3, 5), (1, 4)),      # rotated first, then moved right
    ("translate:2", [0, 2], (3, 3), (5, 3)),                    # dy > 0 moves the content down
    ("scale:0.5,2", [2], (3, 4), (3, 5)),                       # scale about the centre
    ("shear:1", [1], (4, 3), (4, 4)),                           # (x, y) -> (x + m y, y)
])
def test_the_documented_directions(text, params, source, target):
    out = G.transform(_dot((1, 7, 7), *source), G.parse(text), params)
    assert np.unravel_index(np.argmax(out[0]), (7, 7)) == target and out[0][target] > 1 - 1e-9


def test_photometric_parameters_are_applied_after_interpolation_without_clipping():
    image = np.random.default_rng(2).random((1, 5, 6))
    spec = G.parse("contrast:0.5,2+brightness:0.5")
    assert np.array_equal(G.transform(image, spec, [2.0, 0.5]), 2.0 * image + 0.5)


def test_interpolation_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    image = rng.random((2, 9, 11))
    row, col = rng.uniform(-2.5, 10.5, 500), rng.uniform(-2.5, 12.5, 500)
    ours = G.interpolate(image, row, col)
    for ch in range(2):  # zero padding per neighbour is scipy's 'grid-constant'; 'constant' agrees inside the image
        padded = ndimage.map_coordinates(image[ch], [row, col], order=1, mode="grid-constant")
        assert np.max(np.abs(ours[ch] - padded)) < 1e-12
        inside = (row >= 0) & (row <= 8) & (col >= 0) & (col <= 10)
        constant = ndimage.map_coordinates(image[ch], [row[inside], col[inside]], order=1, mode="constant", cval=0.0)
        assert np.max(np.abs(ours[ch][inside] - constant)) < 1e-12
    spec = G.parse("rotate:20+translate:1.5+scale:0.8,1.2+shear:0.2")
    p = G.pieces(spec, 3)[1][17]
    r, c = G.coordinates(spec, p, image.shape)
    expected = ndimage.map_coordinates(image[0], [r.ravel(), c.ravel()], order=1, mode="grid-constant")
    assert np.max(np.abs(G.transform(image, spec, p)[0].ravel() - expected)) < 1e-12


# --- tightness and a planted bug ------------------------------------------------------------------------------

def test_linear_bounds_are_much_tighter_than_intervals_for_a_small_rotation():
    rows, cols = np.mgrid[:16, :16]
    image = np.exp(-((rows - 6.5) ** 2 + (cols - 8.0) ** 2) / 20.0)[None]  # a smooth blob off the centre
    spec = G.parse("rotate:4")
    low, high = G.interval_bounds(image, spec, [0.0], [2.0])
    c = G.linear_bounds(image, spec, [0.0], [2.0])[2]
    ratio = np.mean(2 * c) / np.mean(high - low)
    assert ratio < 0.05, ratio   # measured 0.0066


def _deviation_ratio(image, spec, lo, hi, n=401):
    """Largest |T_p(image) − (A p + b)| / c over n points per parameter of the piece (41 with two or more), bounds
    from the coarsest grid (the piece's corners), where c rests on the Lipschitz constants; and whether any
    point violates."""
    A, b, c = G.linear_bounds(image, spec, lo, hi, boxes=1, points=1)
    n = n if np.sum(hi > lo) == 1 else 41
    p = G._grid([np.linspace(l, h, n) if h > l else np.array([l]) for l, h in zip(lo, hi)])
    y = G.transform(image, spec, p).reshape(len(p), -1)
    return np.max(np.abs(y - (p @ A.T + b)) / c), bool(linear_violations(y, p, A, b, c))


def _lone_pixel(shape, r, c, value=1.0):
    image = np.zeros((1, *shape))
    image[0, r, c] = value
    return image


@pytest.mark.parametrize("text, shape, pixel, lo, hi, attained", [
    ("translate:1", (7, 7), (3, 3), [-0.5, 0.0], [0.5, 0.0], 0.99),   # the tent between pixel centres
    ("translate:1", (7, 7), (3, 3), [0.0, -0.5], [0.0, 0.5], 0.99),
    ("rotate:4", (9, 9), (1, 4), [-2.0], [2.0], 0.95),                 # measured 0.981
    ("scale:0.5,0.7", (11, 11), (5, 10), [0.58], [0.62], 0.9),         # measured 0.935
    ("shear:0.5", (9, 9), (7, 4), [-0.3], [0.3], 0.99),
    ("translate:1+contrast:0,2", (7, 7), (3, 3, 3.0), [-0.5, 0.0, 1.0], [0.5, 0.0, 2.0], 0.99),  # |Φ| up to 3
])
def test_lipschitz_constants_are_nearly_attained_and_a_halved_one_is_caught(monkeypatch, text, shape, pixel, lo,
                                                                         hi, attained):
    """A lone bright pixel makes bilinear interpolation a tent whose slope is the Lipschitz bound: the bound is
    (nearly) attained with the true constants, so a planted bug that halves them must produce violations."""
    spec, image, lo, hi = G.parse(text), _lone_pixel(shape, *pixel), np.array(lo), np.array(hi)
    ratio, violated = _deviation_ratio(image, spec, lo, hi)
    assert not violated and attained <= ratio <= 1
    true = G.lipschitz
    monkeypatch.setattr(G, "lipschitz", lambda *args: 0.5 * true(*args))
    assert _deviation_ratio(image, spec, lo, hi)[1]


def test_a_halved_lipschitz_constant_is_caught_on_random_images(monkeypatch):
    """Deterministic search over seeds: random 6 x 6 images, translate:1, the piece's corners as the grid."""
    spec = G.parse("translate:1")
    search = lambda: [seed for seed in range(10) if _deviation_ratio(
        np.random.default_rng(seed).random((1, 6, 6)), spec, spec.lower, spec.upper, n=41)[1]]
    assert search() == []
    true = G.lipschitz
    monkeypatch.setattr(G, "lipschitz", lambda *args: 0.5 * true(*args))
    assert search() != []


# --- pieces, grids, parsing --------------------------------------------------------------------------------

def test_pieces_cover_the_box_in_a_fixed_order():
    spec = G.parse("rotate:10+scale:0.9,1.1")
    lower, upper = G.pieces(spec, 3)
    assert lower.shape == upper.shape == (9, 2)
    assert np.array_equal(lower[:, 0], np.repeat([-10, lower[3, 0], lower[6, 0]], 3))   # the first varies slowest
    assert np.array_equal(lower[0], spec.lower) and np.array_equal(upper[-1], spec.upper)
    assert np.array_equal(upper[0, 1], lower[1, 1]) and np.array_equal(upper[0, 0], lower[3, 0])  # shared edges
    point = spec.lower + (spec.upper - spec.lower) * np.random.default_rng(4).random((200, 2))
    inside = np.all((lower[:, None] <= point) & (point <= upper[:, None]), axis=2)
    assert np.all(inside.any(axis=0))
    p, y = G.grid_values(np.ones((1, 4, 4)), spec, lower[4], upper[4], 5)
    assert p.shape == (25, 2) and y.shape == (25, 1, 4, 4) and np.all((lower[4] <= p) & (p <= upper[4]))


def test_parse_reads_every_form():
    spec = G.parse("brightness:0.05 + rotate:10+translate:2")
    assert spec.names == ("rotate", "dx", "dy", "brightness") and spec.text == "brightness:0.05 + rotate:10+translate:2"
    assert np.array_equal(spec.lower, [-10, -2, -2, -0.05]) and np.array_equal(spec.upper, [10, 2, 2, 0.05])
    spec = G.parse("translate:1,0.5+scale:0.9,1.1+shear:0.1+contrast:0.8,1.2")
    assert spec.names == ("dx", "dy", "scale", "shear", "contrast") and spec.k == 5
    assert np.array_equal(spec.lower, [-1, -0.5, 0.9, -0.1, 0.8]) and spec.lower.dtype == np.float64


@pytest.mark.parametrize("text, part", [
    ("rotate:abc", "rotate:abc"), ("rotate:-5", "rotate:-5"), ("rotate:200", "rotate:200"), ("zoom:2", "zoom:2"),
    ("scale:1.1,0.9", "scale:1.1,0.9"), ("rotate:5+rotate:3", "rotate:3"), ("translate:1+translate:2", "translate:2"),
    ("rotate:5+", "''"), ("translate:1,2,3", "translate:1,2,3"), ("scale:1.1", "scale:1.1"), ("shear:nan", "shear:nan"),
    ("brightness:1e9", "brightness:1e9"), ("scale:0,1", "scale:0,1"),
])
def test_parse_errors_name_the_bad_part_and_the_valid_forms(text, part):
    with pytest.raises(ValueError, match="valid forms") as error:
        G.parse(text)
    assert part in str(error.value)


def test_bad_pieces_and_images_are_refused():
    spec = G.parse("rotate:5")
    with pytest.raises(ValueError, match="piece"):
        G.interval_bounds(np.ones((1, 4, 4)), spec, [-6.0], [0.0])
    with pytest.raises(ValueError, match="image"):
        G.linear_bounds(np.ones((4, 4)), spec, [-1.0], [0.0])
    with pytest.raises(ValueError, match="params"):
        G.transform(np.ones((1, 4, 4)), spec, [1.0, 2.0])
