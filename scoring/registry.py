"""The sample-metric registry: each metric once, with its function, what it
needs, its direction and whether it is scored per sampler.

`evaluate_samples(samples, dataset)` scores generated data against the
dataset's held-out split with every registered metric whose needs the data
meets: images in the features and predictions of the dataset's extractor,
2-D mixtures by distance to the mixture's modes. Trials, the name checks
before a study starts, the plots and the report all read `METRICS`.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datasources import DataError, Dataset, dataset_spec, load_dataset
from datasources.cache import cached_file
from scoring import arithmetic as a
from scoring import probes
from scoring.copying import Cells, build_cells, ct_score
from scoring.features import USED_CACHE_FILES, Extractor, extractor_for, inception_extractor
from scoring.modes import ModeCounts, noise_floor

# what a metric may need, and when it is there
NEEDS = {
    "features": "image data: the extractor's features of samples and held-out split",
    "classes": "image data: the extractor's class predictions",
    "modes": "2-D mixture data: the mixture's centres and std",
    "inception": "a local Inception v3 weights file (--set inception_weights=...)",
    "clock": "the sampling time, measured by the caller",
    "labels": "a conditional model: the class each sample was asked for",
    "paths": "image data from a latent space: images at t and t + epsilon along latent paths",
    "codes": "an encoder: frozen codes of labelled training images and of the held-out split",
    "anomaly": "a reconstructing family trained without one class (anomaly_class): each "
    "held-out input's reconstruction error, and which inputs are of that class",
    "shifts": "a latent space on labelled images: codes of one class moved along an "
    "attribute vector toward another class, decoded, with the class aimed at",
}


@dataclass(frozen=True)
class ProbeCodes:
    """What the linear probe reads: codes of a few labelled training images
    and of the held-out split, with their labels."""

    train: Tensor
    train_y: Tensor
    test: Tensor
    test_y: Tensor


@dataclass(frozen=True)
class AnomalyScores:
    """Held-out inputs' anomaly scores (their reconstruction errors) and
    whether each is of the class left out of training."""

    scores: Tensor
    is_anomaly: Tensor


@dataclass(frozen=True)
class ShiftedImages:
    """Latent arithmetic's decoded images (scoring.probes.attribute_shifts):
    each with the class its shift aimed at and its pair, and the pairs scored."""

    images: Tensor
    targets: Tensor
    pair: Tensor
    n_pairs: int


@dataclass(frozen=True)
class Reference:
    """The held-out split on one device, with its features and their
    statistics (images); computed once per process per dataset."""

    data: Dataset
    features: Tensor | None
    mu: Tensor | None
    cov: Tensor | None


@cache
def reference(dataset: str, device: str = "cpu", space: int = 0) -> Reference:
    """The held-out split in the feature space of the dataset's classifier
    trained with seed `space` (0: the shipped one)."""
    data = load_dataset(dataset).to(device)
    if not data.is_image:
        return Reference(data, None, None, None)
    feats = extractor_for(dataset, device, space).features(data.test_x)
    return Reference(data, feats, *a.feature_stats(feats))


CELLS_FORMAT = 1  # bump when what `build_cells` computes changes


@cache
def copy_cells(dataset: str, device: str = "cpu", space: int = 0) -> Cells:
    """ct_score's cells: k-means of the training split's features, built once
    per machine, classifier, data and device kind and then read from the
    on-disk cache (the training split's feature pass and the k-means took
    about a second of every trial process's first evaluation on mnist5k,
    12 s on Stacked MNIST)."""
    ref = reference(dataset, device, space)
    ext = extractor_for(dataset, device, space)
    data = hashlib.sha256(ref.data.train_x.cpu().numpy().tobytes())
    data.update(ref.data.test_x.cpu().numpy().tobytes())
    key = f"{ext.weights_sha256[:16]}-{data.hexdigest()[:16]}-{torch.device(device).type}"

    def build(tmp: Path) -> None:
        build_cells(ext.features(ref.data.train_x), ref.features).save(tmp)

    path = cached_file(f"cells-{dataset}-v{CELLS_FORMAT}-{key}.pt", build)
    try:
        return Cells.load(path, device)
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        unreadable = f"cached copy cells {path} are unreadable ({first}); delete the file"
        raise DataError(unreadable) from None


@cache
def _inception_reference(dataset: str, weights: str, device: str) -> tuple[Tensor, Tensor]:
    data = load_dataset(dataset).to(device)
    return a.feature_stats(inception_extractor(weights, device).features(data.test_x))


class Scoring:
    """One set of samples (or latent probes) being scored: the pieces several
    metrics share are computed once, on first use (one extractor pass serves
    every metric)."""

    def __init__(
        self,
        samples: Tensor | None,
        dataset: str,
        ref: Reference,
        inception: str = "",
        seconds: float | None = None,
        labels: Tensor | None = None,
        paths: tuple[Tensor, Tensor] | None = None,
        codes: ProbeCodes | None = None,
        space: int = 0,
        anomaly: AnomalyScores | None = None,
        shifts: ShiftedImages | None = None,
    ) -> None:
        self.samples, self.dataset, self.ref = samples, dataset, ref
        self.inception, self.seconds, self.labels = inception, seconds, labels
        self.paths, self.codes, self.space = paths, codes, space
        self.anomaly, self.shifts = anomaly, shifts
        self.device = str(ref.data.test_x.device)

    @cached_property
    def extractor(self) -> Extractor:
        return extractor_for(self.dataset, self.device, self.space)

    @cached_property
    def features(self) -> Tensor:
        return self.extractor.features(self.samples)

    @cached_property
    def prdc(self) -> dict[str, float]:
        """Precision and recall (k = 3) and density and coverage (k = 5),
        from one set of distance passes."""
        return a.prdc(self.ref.features, self.features, k_pr=3, k_dc=5)

    @cached_property
    def predicted(self) -> Tensor:
        return self.extractor.predict(self.samples)

    @cached_property
    def classes(self) -> dict[str, float]:
        spec = dataset_spec(self.dataset)
        return a.class_coverage(self.predicted, spec.n_classes, spec.min_mode_count)

    @cached_property
    def modes(self) -> ModeCounts:
        """Samples per class (images) or per mixture mode (high-quality 2-D
        samples), with the count that makes a mode covered."""
        spec = dataset_spec(self.dataset)
        if self.ref.data.is_image:
            labels, k = self.predicted.flatten().long(), spec.n_classes
            min_count = a.class_min_count(len(labels), k, spec.min_mode_count)
        else:
            labels = a.nearest_modes(self.samples, self.ref.data.modes, self.ref.data.mode_std)
            k, min_count = len(self.ref.data.modes), 1.0  # captured: one high-quality sample
        counts = torch.bincount(labels[labels >= 0], minlength=k)
        return ModeCounts(counts.cpu().numpy(), min_count, len(labels))

    def class_accuracy(self) -> float:
        """Share of samples the dataset's classifier assigns to the class they
        were asked for; on real held-out images with their labels, the
        classifier's own test accuracy."""
        return (self.predicted == self.labels.to(self.predicted.device)).float().mean().item()

    @cached_property
    def mixture(self) -> dict[str, float]:
        return a.mixture_quality(self.samples, self.ref.data.modes, self.ref.data.mode_std)

    def fid(self) -> float:
        return a.frechet_distance(self.ref.mu, self.ref.cov, *a.feature_stats(self.features))

    def fid_inf(self) -> float:
        return a.fid_infinity(self.ref.mu, self.ref.cov, self.features)

    def ct_score(self) -> float:
        return ct_score(copy_cells(self.dataset, self.device, self.space), self.features)

    def path_length(self) -> float:
        lengths = probes.path_lengths(self.extractor.features, *self.paths, probes.PATH_EPSILON)
        return probes.trimmed_mean(lengths)

    def probe_accuracy(self) -> float:
        c = self.codes
        return probes.linear_probe(c.train, c.train_y, c.test, c.test_y)

    def anomaly_auroc(self) -> float:
        from sklearn.metrics import roc_auc_score

        a = self.anomaly
        return float(roc_auc_score(a.is_anomaly.cpu().numpy(), a.scores.cpu().numpy()))

    def arithmetic_success(self) -> float:
        sh = self.shifts
        if not len(sh.images):  # every scored pair lacked a class mean
            return 0.0 if sh.n_pairs else float("nan")
        predicted = self.extractor.predict(sh.images)
        return probes.shift_success(predicted, sh.targets, sh.pair, sh.n_pairs)

    def fid_inception(self) -> float:
        device = self.device
        inc = inception_extractor(self.inception, device).features(self.samples)
        ref = _inception_reference(self.dataset, self.inception, device)
        return a.frechet_distance(*ref, *a.feature_stats(inc))


@dataclass(frozen=True)
class SampleMetric:
    name: str
    compute: Callable[[Scoring], float]
    needs: frozenset[str]  # keys of NEEDS
    mode: str  # "min" or "max": which way is better
    per_sampler: bool  # also logged as NAME_SAMPLER for each extra sampler
    help: str


METRICS: dict[str, SampleMetric] = {}


def register(
    name: str,
    compute: Callable[[Scoring], float],
    needs: str,
    mode: str,
    per_sampler: bool,
    help: str,
) -> SampleMetric:
    """Add a sample metric; `needs` is space-separated keys of NEEDS."""
    wanted = frozenset(needs.split())
    if unknown := wanted - set(NEEDS):
        raise ValueError(f"metric {name}: unknown needs {sorted(unknown)}")
    if mode not in ("min", "max"):
        raise ValueError(f"metric {name}: mode must be 'min' or 'max'")
    METRICS[name] = SampleMetric(name, compute, wanted, mode, per_sampler, help)
    return METRICS[name]


register(
    "fid", Scoring.fid, "features", "min", True, "Frechet distance of sample and held-out features"
)
register(
    "fid_inf",
    Scoring.fid_inf,
    "features",
    "min",
    True,
    "fid extrapolated to infinitely many samples (linear in 1/N; Chong and Forsyth 2020)",
)
register(
    "vendi",
    lambda s: a.vendi_score(s.features),
    "features",
    "max",
    True,
    "effective number of distinct samples: Vendi score, cosine kernel on the features",
)
register(
    "ct_score",
    Scoring.ct_score,
    "features",
    "max",  # from below: negative is copying; near 0 draws like held-out data
    False,
    "data-copying z-score C_T (Meehan et al. 2020): negative when samples copy training images",
)
register(
    "kid",
    lambda s: a.kid(s.ref.features, s.features),
    "features",
    "min",
    True,
    "unbiased MMD^2, cubic polynomial kernel, in the same features",
)
register(
    "precision",
    lambda s: s.prdc["precision"],
    "features",
    "max",
    True,
    "share of samples inside the real manifold (k = 3)",
)
register(
    "recall",
    lambda s: s.prdc["recall"],
    "features",
    "max",
    True,
    "share of real data inside the sample manifold (k = 3)",
)
register(
    "density",
    lambda s: s.prdc["density"],
    "features",
    "max",
    False,
    "real neighbourhoods holding each sample, on average (k = 5)",
)
register(
    "coverage",
    lambda s: s.prdc["coverage"],
    "features",
    "max",
    True,  # with recall, the diversity side of a sampler's trade-off
    "share of real neighbourhoods holding a sample (k = 5)",
)
register(
    "modes_covered",
    lambda s: s.classes["modes_covered"],
    "classes",
    "max",
    True,
    "classes predicted for at least the dataset's minimum count of samples",
)
register(
    "mode_kl",
    lambda s: s.classes["mode_kl"],
    "classes",
    "min",
    False,
    "KL of the predicted-class histogram to uniform",
)
register(
    "modes_captured",
    lambda s: s.mixture["modes_captured"],
    "modes",
    "max",
    True,
    "mixture modes with a high-quality sample (PacGAN)",
)
register(
    "hq_fraction",
    lambda s: s.mixture["hq_fraction"],
    "modes",
    "max",
    True,
    "share of samples within 3 std of a mode",
)
register(
    "reverse_kl",
    lambda s: s.mixture["reverse_kl"],
    "modes",
    "min",
    True,
    "KL of the high-quality samples' mode histogram to uniform",
)
register(
    "fid_inception",
    Scoring.fid_inception,
    "features inception",
    "min",
    False,
    "Frechet distance in Inception v3 pool features",
)
register(
    "class_accuracy",
    Scoring.class_accuracy,
    "classes labels",
    "max",
    True,
    "share of samples classified as the class asked for (conditional models)",
)
register(
    "path_length",
    Scoring.path_length,
    "paths",
    "min",
    False,
    "perceptual path length in the classifier's features (smaller: a smoother latent space)",
)
register(
    "probe_accuracy",
    Scoring.probe_accuracy,
    "codes",
    "max",
    False,
    "held-out accuracy of a logistic regression on frozen codes of a few labelled images",
)
register(
    "anomaly_auroc",
    Scoring.anomaly_auroc,
    "anomaly",
    "max",
    False,
    "ROC AUC of held-out reconstruction error as the score of the class left out of training",
)
register(
    "arithmetic_success",
    Scoring.arithmetic_success,
    "shifts",
    "max",
    False,
    "share of held-out codes of class a, plus the class-b-minus-class-a mean vector, "
    "decoded to images the classifier calls b (pairs c -> c+1)",
)
register("sample_seconds", lambda s: s.seconds, "clock", "min", True, "wall time per 1000 samples")


LATENT_NEEDS = frozenset(
    {"paths", "codes", "anomaly", "shifts"}
)  # scored by evaluate_latent, not on samples


def needs_met(
    is_image: bool, inception: bool = False, clock: bool = False, labels: bool = False
) -> frozenset[str]:
    have = {"features", "classes"} if is_image else {"modes"}
    options = {"inception": inception, "clock": clock, "labels": labels}
    return frozenset(have | {k for k, on in options.items() if on})


def metric_names(
    is_image: bool, inception: bool = True, clock: bool = True, labels: bool = True
) -> list[str]:
    """The sample metrics scored on such data (by default with every option on)."""
    have = needs_met(is_image, inception, clock, labels)
    return [m.name for m in METRICS.values() if m.needs <= have]


DRAW_STATS = ("mean", "std")  # of a sample metric over a final evaluation's draws


def drawn(metric: str, stat: str) -> str:
    """The name of a sample metric's `stat` over the final evaluation's draws
    of samples (the eval_draws setting): fid_draws_mean, fid_draws_std."""
    return f"{metric}_draws_{stat}"


# the metrics scored again in the spaces of classifiers trained with other
# seeds (the eval_classifiers setting): how much a number owes to the space
SPACE_METRICS = ("fid", "modes_covered")


def across_classifiers(metric: str, stat: str) -> str:
    """The name of a metric's `stat` over classifier spaces: fid_classifiers_std."""
    return f"{metric}_classifiers_{stat}"


def in_spaces(x: Tensor, dataset: str, spaces: int) -> dict[str, float]:
    """SPACE_METRICS of samples x in the feature spaces of the dataset's
    classifiers trained with seeds 0 .. spaces - 1: each other seed's value
    (fid_classifier2) and their mean and std (ddof 1) over all the spaces
    (spaces >= 2)."""
    values: dict[str, list[float]] = {m: [] for m in SPACE_METRICS}
    out = {}
    for space in range(spaces):
        scoring = Scoring(x, dataset, reference(dataset, str(x.device), space), space=space)
        for m in SPACE_METRICS:
            values[m].append(float(METRICS[m].compute(scoring)))
            if space:
                out[f"{m}_classifier{space}"] = values[m][-1]
    for m, v in values.items():
        t = torch.tensor(v, dtype=torch.float64)
        out[across_classifiers(m, "mean")] = float(t.mean())
        out[across_classifiers(m, "std")] = float(t.std())
    return out


def _latent_metrics(
    is_image: bool, paths: bool, codes: bool, anomaly: bool = False, shifts: bool = False
) -> list[SampleMetric]:
    """The latent-probe metrics scored for a latent space with paths (image
    data only: path length is measured in image features), codes,
    reconstructions scored as anomaly detection, and shifted codes (latent
    arithmetic; image data only: the classifier judges the decoded images)."""
    pieces = (
        ("paths", paths and is_image),
        ("codes", codes),
        ("anomaly", anomaly),
        ("shifts", shifts and is_image),
    )
    have = {k for k, on in pieces if on}
    return [m for m in METRICS.values() if m.needs & LATENT_NEEDS and m.needs <= have]


def latent_metric_names(
    is_image: bool, paths: bool, codes: bool, anomaly: bool = False, shifts: bool = False
) -> list[str]:
    """The latent-probe metrics a family with such a latent space logs."""
    return [m.name for m in _latent_metrics(is_image, paths, codes, anomaly, shifts)]


def direction(name: str) -> str | None:
    """A registered metric's direction ("min" or "max"), per-sampler names
    (fid_ddim10_eta0) included; None for a name the registry lacks."""
    split = split_sampler_metric(name)
    metric = METRICS.get(split[0] if split else name)
    return metric.mode if metric else None


def split_sampler_metric(name: str) -> tuple[str, str] | None:
    """'fid_ddim10_eta0' -> ('fid', 'ddim10_eta0') for per-sampler metrics;
    None for a metric's own name (fid_inf is not fid of a sampler 'inf')."""
    if name in METRICS:
        return None
    for m in sorted(METRICS.values(), key=lambda m: -len(m.name)):
        if m.per_sampler and name.startswith(m.name + "_") and len(name) > len(m.name) + 1:
            return m.name, name[len(m.name) + 1 :]
    return None


def _as_tensor(samples: Tensor | np.ndarray, device: str | None) -> Tensor:
    x = torch.as_tensor(np.asarray(samples) if not isinstance(samples, Tensor) else samples)
    return x.float().to(device or x.device)


def evaluate_samples(
    samples: Tensor | np.ndarray,
    dataset: str = "mnist5k",
    device: str | None = None,
    inception_weights: str | None = None,
    seconds: float | None = None,
    labels: Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """Score generated samples against `dataset`'s held-out split with every
    registered metric the data allows.

    Images: (N, C, H, W) in [0, 1] -> fid, kid, precision, recall, density,
    coverage, modes_covered, mode_kl; with `inception_weights` (a local
    Inception v3 weights file) also fid_inception.
    2-D mixtures: (N, 2) -> modes_captured, hq_fraction, reverse_kl.
    With `seconds` (sampling time per 1000 samples): sample_seconds.
    With `labels` (the class each image was asked for): class_accuracy.
    """
    return score_samples(_as_tensor(samples, device), dataset, inception_weights, seconds, labels)[
        0
    ]


def score_samples(
    x: Tensor,
    dataset: str,
    inception_weights: str | None = None,
    seconds: float | None = None,
    labels: Tensor | np.ndarray | None = None,
) -> tuple[dict[str, float], ModeCounts]:
    """evaluate_samples's metrics of samples x (a tensor on its device) and
    their mode histogram, from one pass of the extractor."""
    ref = reference(dataset, str(x.device))
    expected = tuple(ref.data.test_x.shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"samples of shape {tuple(x.shape)} do not match {dataset} samples (N, "
            f"{', '.join(map(str, expected))})"
        )
    y = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    if y is not None and y.shape != (len(x),):
        raise ValueError(f"labels of shape {tuple(y.shape)} do not match {len(x)} samples")
    scoring = Scoring(x, dataset, ref, inception_weights or "", seconds, y)
    have = needs_met(ref.data.is_image, bool(inception_weights), seconds is not None, y is not None)
    metrics = {m.name: float(m.compute(scoring)) for m in METRICS.values() if m.needs <= have}
    return metrics, scoring.modes


@cache
def mode_floor(dataset: str, n: int, device: str = "cpu") -> float:
    """The noise floor of mode_jsd for n samples: two draws of n from the
    held-out split's own modes (as the classifier reads them, for images)."""
    ref = reference(dataset, device)
    real = Scoring(ref.data.test_x, dataset, ref).modes
    labels = np.repeat(np.arange(len(real.counts)), real.counts)
    if not ref.data.is_image:  # points in no mode still count in the draws
        labels = np.concatenate([labels, np.full(real.n - len(labels), -1)])
    return noise_floor(labels, len(real.counts), n)


def evaluate_latent(
    dataset: str,
    paths: tuple[Tensor, Tensor] | None = None,
    codes: ProbeCodes | None = None,
    device: str = "cpu",
    anomaly: AnomalyScores | None = None,
    shifts: ShiftedImages | None = None,
) -> dict[str, float]:
    """Score a latent space: with `paths` (images at t and t + PATH_EPSILON
    along latent paths; image data) path_length, with `codes`
    probe_accuracy, with `anomaly` anomaly_auroc, with `shifts`
    arithmetic_success."""
    ref = reference(dataset, device)
    scoring = Scoring(None, dataset, ref, paths=paths, codes=codes, anomaly=anomaly, shifts=shifts)
    have = (paths is not None, codes is not None, anomaly is not None, shifts is not None)
    return {m.name: float(m.compute(scoring)) for m in _latent_metrics(ref.data.is_image, *have)}


@cache
def pixel_probe(dataset: str, n_labels: int, data_dir: str = "data") -> float:
    """The linear probe on raw pixels of the first n_labels training images:
    the baseline a code's probe_accuracy is read against."""
    data = load_dataset(dataset, data_dir)
    train_x, train_y = data.train_x[:n_labels], data.train_y[:n_labels]
    return probes.linear_probe(train_x, train_y, data.test_x, data.test_y)


def predict_classes(x: Tensor, dataset: str) -> Tensor:
    """The dataset's classifier's class for each image of x (on x's device)."""
    return extractor_for(dataset, str(x.device)).predict(x)


def provenance(dataset: str, device: str = "cpu") -> dict[str, str]:
    """What a run records beside its scores: which extractor, which weights,
    which reference set, so numbers from different runs are known comparable."""
    data = reference(dataset, device).data
    out = {"fid_reference": f"{dataset}:test", "fid_n_real": str(len(data.test_x))}
    if data.is_image:
        ext = extractor_for(dataset, device)
        out |= {
            "fid_extractor": ext.name,
            "fid_weights_sha256": ext.weights_sha256,
            "classifier_test_accuracy": f"{ext.accuracy:.4f}",
        }
    return out


def prepare_reference(dataset: str, spaces: int = 1) -> dict[str, bytes]:
    """Build the dataset's extractors and references once, before any trial:
    the first use of a classifier without shipped weights trains it (cached
    on disk), which trials starting together would otherwise all wait for.
    `spaces`: classifiers of seeds 0 .. spaces - 1 (eval_classifiers).
    Returns the cache entries the extractors were built from, name -> bytes,
    for the trials to install (`datasources.cache.install`) wherever they run."""
    for space in range(spaces):
        reference(dataset, "cpu", space)
    return {name: path.read_bytes() for name, path in USED_CACHE_FILES.items()}
