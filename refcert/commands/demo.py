"""``refcert demo``: the whole story in a few minutes, offline, on the shipped MNIST subset.

Trains one small network three ways — standard, adversarial (PGD, Madry'18) and certified (DiffAI,
Mirman'18) — then on held-out images reports clean accuracy, accuracy under a PGD attack, and the
percentage certified robust by Box, DeepZono and DeepPoly at one ε (``refcert.certify``), and plots
certified accuracy against ε (PNG; skipped with a note when matplotlib is missing).  It also trains a
small autoencoder (piecewise-linear decoder) and an image classifier for generative specifications
(``refcert.generative``), saves them under ``OUT/path/`` and prints the ``refcert certify-path``
command that certifies latent-space paths through them.

Progress goes to stderr: one line per training epoch and per certification stage, each with its time
and an estimate of the time left in the whole demo; the table and the file names go to stdout.  The
folder ``OUT`` is locked for the whole run (``refcert.runs.lock``) and a folder that already holds a
demo's files is reused only with ``--overwrite``.  Unless ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS``
is set, the demo runs OpenBLAS with one thread: on a busy 2-core machine its threads fought the other
processes for the cores and made the demo several times slower (the earlier demo took 108 s with its
default threads and 37 s with one at load 1.7; ``bench/paths.py`` and ``bench/train_epoch.py`` set one
thread for the same reason).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.util
import os
import pathlib
import shlex
import sys
import time

import numpy as np

import refcert
from refcert import attacks, datasets, domains, generative, models, runs
from refcert.certify import certify
from refcert.io.npz import atomic_write
from refcert.parallel import THREAD_VARIABLES
from refcert.train import TrainConfig, accuracy, train

TABLE_DOMAINS = ("box", "deepzono", "deeppoly")
METHODS = ("standard", "pgd", "diffai")
PATH_NETS = ("encoder", "decoder", "classifier")
# Inputs per abstract run in the evaluation: the zonotope's error terms grow with the batch, so DeepZono
# is fastest in small batches on a CPU (4: 2.3 s against 4.4 s at 50 for 200 images, standard network).
EVAL_BATCH = {"deepzono": 4}

# Seconds each stage took per image on the reference machine (2 AMD EPYC cores, one BLAS thread): the plan
# that the time-left estimate scales by what this machine took for the stages done so far.
REFERENCE = {"train:standard": 2.5e-5, "train:pgd": 1.8e-4, "train:diffai": 8.5e-5,  # per training image, epoch
             "evaluate:standard": 1.5e-2, "evaluate:pgd": 1.5e-2, "evaluate:diffai": 1.1e-2,  # per test image
             "plot": 4e-5, "plot:start": 1.0,   # per test image, radius and network; matplotlib and the PNG
             "path:autoencoder": 1.5e-5, "path:classifier": 7e-6}      # per training image and epoch


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    model: str = "convtiny"
    eps: float = 0.1
    train_images: int = 4000
    test_images: int = 500
    epochs: int = 6
    batch_size: int = 50
    diffai_domain: str = "box"
    diffai_eps: float = 0.15          # DiffAI trains at a somewhat larger radius than it is tested at
    plot_eps: tuple = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2)
    plot_domain: str = "box"          # cheap enough for a whole curve; the table's domains are marked at eps
    path_latent: int = 8              # generative-path models (refcert.generative): latent size,
    path_hidden: int = 64             # hidden width of encoder and decoder,
    path_ae_epochs: int = 10          # autoencoder epochs,
    path_classifier_epochs: int = 5   # classifier epochs (on the same training images)
    path_pairs: int = 5               # --pairs of the printed certify-path command


QUICK = DemoSettings(train_images=500, test_images=20, epochs=1, plot_eps=(0.0, 0.1), path_ae_epochs=3,
                     path_classifier_epochs=2, path_pairs=2)


def add_arguments(parser):
    parser.add_argument("--out", default="demo-out",
                        help="folder for models, metrics, results.csv, the plot and the path models (path/)")
    parser.add_argument("--quick", action="store_true", help="a tiny run in seconds (for tests)")
    parser.add_argument("--eps", type=float, default=None, help="certification radius (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="run again in an --out folder that holds an earlier demo, replacing its files")


def configs(s: DemoSettings, seed: int) -> dict[str, TrainConfig]:
    common = {"epochs": s.epochs, "batch_size": s.batch_size, "seed": seed, "ramp_epochs": max(1.0, s.epochs / 2)}
    return {"standard": TrainConfig(method="standard", **common),
            "pgd": TrainConfig(method="pgd", eps=s.eps, pgd_steps=3, **common),
            "diffai": TrainConfig(method="diffai", domain=s.diffai_domain, eps=s.diffai_eps, kappa=0.8, **common)}


def evaluate(net, x, y, eps, domain_names, seed: int) -> dict:
    """Clean accuracy, PGD accuracy and % verified per domain on (x, y) at ``eps``."""
    row = {"clean": accuracy(net, x, y)}
    found = attacks.pgd(net, x, y, eps, steps=20, restarts=1, rng=seed)
    robust = found.margins.numpy() > 0
    row["pgd"] = float(np.mean(robust))
    for name in domain_names:
        result = certify(net, x, y, eps, domain=name, attack=False, batch_size=EVAL_BATCH.get(name, 50))
        verified = np.array([v == "verified" for v in result.verdicts])
        if np.any(verified & ~robust):  # a certificate contradicted by an attack point: never print it
            raise RuntimeError(f"domain {name!r} verified input {int(np.argmax(verified & ~robust))} that PGD broke")
        row[name] = float(np.mean(verified))
    return row


def duration(seconds: float) -> str:
    """'0.04 s', '0.4 s', '14 s', '1 min 10 s' (to 10 s), '1 h 2 min'."""
    if seconds < 0.095:
        return f"{seconds:.2f} s"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    if seconds < 3595:
        minutes, tens = divmod(int(round(seconds / 10)), 6)
        return f"{minutes} min {10 * tens} s" if tens else f"{minutes} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Clock:
    """The demo's stages, their times and the time left.

    ``plan``: [(key, kind, reference seconds)].  A stage not yet done is estimated as its reference time
    times the ratio actual / reference of the done stages of its kind (the epochs of one method, say),
    else of all done stages; so the training estimate holds from the first epoch on, and the
    certification estimate from the first evaluation on.
    """

    def __init__(self, plan, stream=None):
        self.plan, self.stream = list(plan), stream
        self.took: dict = {}
        self.began = self.mark = time.perf_counter()

    def left(self) -> float | None:
        done = [(kind, ref, self.took[key]) for key, kind, ref in self.plan if key in self.took]
        if not done:
            return None
        overall = sum(t for _, _, t in done) / max(sum(r for _, r, _ in done), 1e-12)
        ratio = {kind: sum(t for k, _, t in done if k == kind) / max(sum(r for k, r, _ in done if k == kind), 1e-12)
                 for kind, _, _ in done}
        return sum(ref * ratio.get(kind, overall) for key, kind, ref in self.plan if key not in self.took)

    def done(self, key, what: str) -> float:
        """Record stage ``key`` as ending now and print ``what`` with its time and the time left."""
        now = time.perf_counter()
        self.took[key], self.mark = now - self.mark, now
        left = self.left()
        more = any(k not in self.took for k, _, _ in self.plan)
        self.say(f"{what}, {duration(self.took[key])}" + (f", about {duration(left)} left in the demo" if more else ""))
        return self.took[key]

    def restart(self):
        """Don't count the time since the last stage (a pause between stages) in the next one."""
        self.mark = time.perf_counter()

    def say(self, line: str):
        print(line, file=self.stream or sys.stderr, flush=True)


def make_plan(s: DemoSettings, plot: bool) -> list:
    """[(key, kind, reference seconds)] of the stages in the order ``run`` takes them."""
    plan = []
    for m in METHODS:
        plan += [((m, "epoch", e), f"train:{m}", REFERENCE[f"train:{m}"] * s.train_images)
                 for e in range(1, s.epochs + 1)]
        plan.append(((m, "evaluate"), "evaluate", REFERENCE[f"evaluate:{m}"] * s.test_images))
    plan.append((("path",), "path", s.train_images * (REFERENCE["path:autoencoder"] * s.path_ae_epochs
                                                     + REFERENCE["path:classifier"] * s.path_classifier_epochs)))
    if plot:
        plan.append((("plot",), "plot",
                     REFERENCE["plot:start"] + REFERENCE["plot"] * s.test_images * len(s.plot_eps) * len(METHODS)))
    return plan


def earlier_demo(out: pathlib.Path) -> list[str]:
    """The files of an earlier demo in ``out`` (relative names)."""
    names = ["results.csv", "certified_vs_eps.png", *(f"{m}/{f}" for m in METHODS for f in runs.RUN_FILES),
             *(f"path/{n}.npz" for n in PATH_NETS)]
    return [name for name in names if (out / name).exists()]


@contextlib.contextmanager
def one_blas_thread():
    """OpenBLAS limited to one thread in the body, unless the user set a thread count in the environment
    (threadpoolctl when installed, else OpenBLAS's own setter in the loaded library; no-op elsewhere)."""
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(1, user_api="blas"):
            yield
        return
    setters = _openblas_thread_setters()
    before = [(set_threads, get_threads()) for set_threads, get_threads in setters]
    for set_threads, _ in before:
        set_threads(1)
    try:
        yield
    finally:
        for set_threads, count in before:
            set_threads(count)


def _openblas_thread_setters() -> list:
    """[(set_num_threads, get_num_threads)] of the OpenBLAS libraries loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as stream:
            paths = sorted({line.split()[-1] for line in stream
                            if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    found.append((setter, getter))
    return found


def run(args):
    settings = QUICK if args.quick else DemoSettings()
    if args.eps is not None:
        settings = dataclasses.replace(settings, eps=float(args.eps))
    out = pathlib.Path(args.out)
    with runs.lock(out, what="refcert demo"), one_blas_thread():
        found = earlier_demo(out)
        if found and not args.overwrite:
            raise FileExistsError(f"{out} already holds a demo ({', '.join(found[:3])}"
                                  f"{', ...' if len(found) > 3 else ''}): add --overwrite to run it again there "
                                  f"(replacing those files), or choose another --out")
        for name in found:
            if "/" not in name or name.startswith("path/"):  # the method folders: train(overwrite=True)
                (out / name).unlink()
        return _run(settings, args, out)


def _run(settings: DemoSettings, args, out: pathlib.Path) -> int:
    available = [d for d in TABLE_DOMAINS if d in domains.names()]
    missing = [d for d in TABLE_DOMAINS if d not in available]
    plotting = importlib.util.find_spec("matplotlib") is not None
    x, y = datasets.load("mnist-mini", "train")
    x_test, y_test = datasets.load("mnist-mini", "test")
    x, y = x[:settings.train_images], y[:settings.train_images]
    x_test, y_test = x_test[:settings.test_images], y_test[:settings.test_images]
    clock = Clock(make_plan(settings, plotting))
    clock.say(f"refcert demo: {settings.model} on {len(y)} MNIST training images (shipped subset), "
              f"{len(y_test)} held-out test images, eps = {settings.eps}; "
              f"{settings.epochs} epoch{'s' if settings.epochs != 1 else ''} each of standard, PGD and DiffAI training")
    rows, nets = {}, {}
    for method, config in configs(settings, args.seed).items():
        net = models.get(settings.model, "mnist", seed=args.seed)

        def epoch_done(row, method=method, config=config):
            clock.done((method, "epoch", row["epoch"]),
                       f"{method}: epoch {row['epoch']}/{config.epochs}, loss {row['loss']:.3f}, "
                       f"held-out accuracy {100 * row['val_accuracy']:.1f}%")
        train(net, x, y, config, out=out / method, val=(x_test, y_test), progress=False, callback=epoch_done,
              overwrite=args.overwrite)
        nets[method] = net
        rows[method] = evaluate(net, x_test, y_test, settings.eps, available, args.seed)
        clock.done((method, "evaluate"), f"{method}: evaluated on {len(y_test)} test images at eps {settings.eps} "
                                         f"(clean, PGD, {', '.join(available)})")
    print_table(rows, available, settings, len(y_test))
    if missing:
        print(f"(domains not available in this build: {', '.join(missing)})")
    write_results(out / "results.csv", rows, available)
    clock.restart()
    command = path_models(out / "path", x, y, settings, args.seed)
    clock.done(("path",), f"path models: autoencoder (latent {settings.path_latent}) and classifier trained, "
                          f"in {out / 'path'}")
    clock.restart()
    if plot(out / "certified_vs_eps.png", nets, rows, available, x_test, y_test, settings):
        clock.done(("plot",), f"plot: {settings.plot_domain} at {len(settings.plot_eps)} radii for "
                              f"{len(nets)} networks")
    print(f"\nCertify latent-space paths (generative specifications) with the models in {out / 'path'}/:\n"
          f"  {command}")
    print(f"\ntotal time {duration(time.perf_counter() - clock.began)}; models, metrics and results in {out}/")
    return 0


def path_models(folder: pathlib.Path, x, y, s: DemoSettings, seed: int) -> str:
    """Train and save encoder, decoder (hard-sigmoid head) and classifier for ``refcert certify-path``;
    returns the command line that certifies paths through them on the shipped test images."""
    encoder, decoder = generative.autoencoder(s.path_latent, s.path_hidden, seed=seed)
    generative.train_autoencoder(x, encoder, decoder, epochs=s.path_ae_epochs, seed=seed)
    classifier = generative.classifier(hidden=100, seed=seed)
    generative.train_classifier(x, y, classifier, epochs=s.path_classifier_epochs, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, net in zip(PATH_NETS, (encoder, decoder, classifier)):
        refcert.save(net, folder / f"{name}.npz")
    return shlex.join(["refcert", "certify-path", *(a for name in PATH_NETS for a in (f"--{name}",
                                                                                     str(folder / f"{name}.npz"))),
                       "--inputs", "mnist-mini:test", "--pairs", str(s.path_pairs)])


def print_table(rows: dict, domain_names, s: DemoSettings, n: int):
    header = f"{'training':<10} {'clean':>7} {'PGD':>7} " + " ".join(f"{d:>9}" for d in domain_names)
    print(f"\nMNIST ({n} test images), {s.model}, eps = {s.eps}: accuracy and % certified robust")
    print(header)
    print("-" * len(header))
    for method, row in rows.items():
        cells = " ".join(f"{100 * row[d]:>8.1f}%" for d in domain_names)
        print(f"{method:<10} {100 * row['clean']:>6.1f}% {100 * row['pgd']:>6.1f}% {cells}")


def write_results(path, rows: dict, domain_names):
    lines = ["training,clean,pgd," + ",".join(domain_names)]
    lines += [",".join([m, f"{r['clean']:.4f}", f"{r['pgd']:.4f}"] + [f"{r[d]:.4f}" for d in domain_names])
              for m, r in rows.items()]
    atomic_write(path, lambda stream: stream.write(("\n".join(lines) + "\n").encode()))


def plot(path, nets: dict, rows: dict, domain_names, x, y, s: DemoSettings) -> bool:
    """Certified accuracy against eps (``s.plot_domain`` curves; the table's domains as markers at s.eps);
    False (with a note) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(plot skipped: matplotlib is not installed; pip install 'refcert[plot]')")
        return False
    domain = s.plot_domain
    fig, ax = plt.subplots(figsize=(8, 4))
    markers = dict(zip(domain_names, "sD^v"))
    for method, net in nets.items():
        certified = [certify(net, x, y, eps, domain=domain, attack=False, batch_size=50).fraction("verified")
                     for eps in s.plot_eps]
        line, = ax.plot(s.plot_eps, [100 * c for c in certified], marker="o", label=f"{method} ({domain})")
        for name in domain_names:
            if name != domain:
                ax.plot([s.eps], [100 * rows[method][name]], linestyle="none", marker=markers[name],
                        color=line.get_color(), label=f"{method} ({name})")
    ax.set_xlabel("eps (L∞, pixel scale)")
    ax.set_ylabel("% certified robust")
    ax.set_title(f"{s.model} on the MNIST subset")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda stream: fig.savefig(stream, format="png", dpi=100))
    plt.close(fig)
    print(f"plot: {path}")
    return True
