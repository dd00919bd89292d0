"""How long a job will take: its units of work (pipelines/cost_model.py) times rates learned online.

Every completed job leaves a sample (its units of work, its inference seconds) in the store. The
rates, seconds per unit of each kind of work, are the non-negative least-squares fit of the last
``CALIBRATION_SAMPLES`` samples, weighted so the fit minimises the *relative* error (a 4-step
thumbnail and a 50-step 4k job count alike, as an ETA's error is felt relative to the wait) and
favours the newest samples (``RECENCY_HALF_LIFE``). The fit is exact NNLS, found by enumerating
the feature subsets (five features: 31 small least squares).
Before any job with units of work has completed, every job is estimated at the mean of the samples,
or at ``default_job_seconds`` when there are none.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from pipelines.cost_model import WORK_FEATURES

CALIBRATION_SAMPLES = 50
# A sample this many samples older than the newest counts half as much in the fit.
RECENCY_HALF_LIFE = 10
# An estimate is never below this: a status never promises a job in no time.
MIN_SECONDS = 0.1
# Queued jobs ahead counted one by one; further ones are priced at the mean (bounded status reads).
MAX_AHEAD_PRICED = 500

# In a job's work when its pod had to load its edit model first (weights.yaml swap): the measured
# seconds of that load, added as they are (the fit learns from the seconds without the swap).
SWAP_SECONDS = "swap_seconds"

Sample = tuple[dict[str, float], float]
# Among fits that explain the samples equally well (too few or too alike samples), the one whose rates
# are on these first: a pod that has only run one kind of job still tells a job with ten times the
# transformer work that it takes about ten times as long, rather than as long.
PREFERENCE = ("edit_tflops", "refine_tflops", "megapixels", "forwards", "pictures")


class CostModel:
    def __init__(self, samples: list[Sample], default_seconds: float):
        seconds = [s for _, s in samples if s > 0]
        self.default_seconds = sum(seconds) / len(seconds) if seconds else default_seconds
        usable = [(w, s) for w, s in samples if w and s > 0]
        self.rates = _fit(usable) if usable else None
        if self.rates is not None and not any(w.get("refine_tflops") for w, _ in usable):
            # No refined job seen yet: the refiner's TFLOPs cost what the edit model's do, not nothing.
            self.rates.setdefault("refine_tflops", self.rates.get("edit_tflops", 0.0))

    def seconds(self, work: dict[str, float] | None) -> float:
        """Seconds of a job with these units of work, with the model swap it waits for, if any."""
        swap = (work or {}).get(SWAP_SECONDS, 0.0)
        if not work or self.rates is None:
            return max(self.default_seconds, MIN_SECONDS) + swap
        estimate = sum(rate * work.get(name, 0.0) for name, rate in self.rates.items())
        return max(estimate, MIN_SECONDS) + swap


def _fit(samples: list[Sample]) -> dict[str, float] | None:
    x = np.array([[w.get(f, 0.0) for f in WORK_FEATURES] for w, _ in samples], dtype=float)
    y = np.array([s for _, s in samples], dtype=float)
    x, y = x / y[:, None], np.ones_like(y)  # relative error: each row divided by its own seconds
    # Newer samples weigh more (samples come newest first): the rates follow a GPU that warms up,
    # throttles or gets a neighbour, instead of averaging over the last hour.
    weight = np.sqrt(0.5 ** (np.arange(len(y)) / RECENCY_HALF_LIFE))
    x, y = x * weight[:, None], y * weight
    present = [i for i in range(len(WORK_FEATURES)) if np.any(x[:, i] > 0)]
    best: tuple[tuple, dict[str, float]] | None = None
    for size in range(1, len(present) + 1):
        for subset in itertools.combinations(present, size):
            coef, *_ = np.linalg.lstsq(x[:, subset], y, rcond=None)
            if np.any(coef < 0):
                continue
            residual = float(np.sum((x[:, subset] @ coef - y) ** 2))
            # Among equally good fits, the one with fewer rates, then on the preferred features.
            ranks = sorted(PREFERENCE.index(WORK_FEATURES[i]) for i in subset)
            key = (round(residual, 9), size, ranks)
            if best is None or key < best[0]:
                best = (key, {WORK_FEATURES[i]: float(c) for i, c in zip(subset, coef, strict=True)})
    return best[1] if best else None


class CostModelCache:
    """The fit of the latest samples, redone only when they change (status polls read it often)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model: CostModel | None = None

    def model(self, samples: list[Sample], default_seconds: float) -> CostModel:
        key = (default_seconds, tuple((tuple(sorted(w.items())), s) for w, s in samples))
        with self._lock:
            if key != self._key or self._model is None:
                self._model = CostModel(samples, default_seconds)
                self._key = key
            return self._model


def queued_eta(
    model: CostModel,
    own: dict[str, float],
    ahead: list[dict[str, float]],
    more_ahead: int,
    running: list[tuple[dict[str, float], float]],
    workers: int,
) -> float:
    """Seconds until a queued job is done: what the running jobs have left and the queued jobs ahead
    of it (``ahead``, plus ``more_ahead`` not listed), shared by the workers, then its own time."""
    left = sum(max(model.seconds(w) - elapsed, 0.0) for w, elapsed in running)
    left += sum(model.seconds(w) for w in ahead)
    if more_ahead:
        priced = [model.seconds(w) for w in ahead] or [model.seconds(None)]
        left += more_ahead * sum(priced) / len(priced)
    return left / max(workers, 1) + model.seconds(own)


def running_eta(model: CostModel, work: dict[str, float], elapsed: float) -> float:
    return max(model.seconds(work) - elapsed, MIN_SECONDS)
