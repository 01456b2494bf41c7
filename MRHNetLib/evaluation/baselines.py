"""Baselines that a virtual-histology network must beat: voxel-wise fits of the same inputs.

Each baseline sees, per voxel, the centre values of the network's input channels (the 67 raw images of
the published protocol), normalised as the network sees them (:meth:`MRHNetLib.data.subject.Subject.inputs`),
and is trained on subjects that hold the target:

* ``ridge``: standard scaler + ridge regression (scikit-learn ``Ridge``, alpha 1);
* ``boosting``: gradient-boosted trees (scikit-learn ``HistGradientBoostingRegressor``, 200 iterations,
  fixed ``random_state``, no early stopping).

Training rows are a seeded random sample of at most ``max_samples`` brain voxels pooled over the
training subjects, and the fits run on one OpenMP thread (busy shared CPUs slow the trees' threaded
fit dozens of times), so a fit takes seconds. Unlike the network, a baseline sees no 3 x 3 context.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import MRHNetError

BASELINES = ("ridge", "boosting")
BASELINE_NAMES = {"ridge": "ridge fit", "boosting": "gradient boosting"}
DEFAULT_MAX_SAMPLES = 20000


def centre_features(stack: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) normalised inputs -> (N, C) float32 rows of the voxels in ``mask`` (C order)."""
    stack = np.asarray(stack)
    return np.ascontiguousarray(stack[:, np.asarray(mask, dtype=bool)].T, dtype=np.float32)


def sample_rows(n: int, max_samples: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` of ``n`` rows (all when fewer), seeded."""
    if max_samples <= 0:
        raise MRHNetError(f"baseline sample size {max_samples} must be positive")
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def make_model(kind: str, seed: int = 0):
    """An unfitted scikit-learn regressor for baseline ``kind`` (``ridge`` or ``boosting``)."""
    if kind == "ridge":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    if kind == "boosting":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, max_leaf_nodes=31,
                                             early_stopping=False, random_state=seed)
    raise MRHNetError(f"unknown baseline '{kind}' (use {', '.join(BASELINES)})")


def fit_predict(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
                max_samples: int = DEFAULT_MAX_SAMPLES, threads: int = 1) -> np.ndarray:
    """Fit baseline ``kind`` on (a seeded sample of) the rows ``x_train`` (N, C) -> ``y_train`` (N,) and
    return its prediction (M,) float32 for ``x_test`` (M, C), on ``threads`` OpenMP/BLAS threads."""
    x_train, y_train = np.asarray(x_train), np.asarray(y_train, dtype=np.float64).reshape(-1)
    if x_train.ndim != 2 or len(x_train) != len(y_train):
        raise MRHNetError(f"baseline training rows {x_train.shape} do not match targets {y_train.shape}")
    if np.asarray(x_test).shape[1:] != x_train.shape[1:]:
        raise MRHNetError(f"baseline test rows have {np.asarray(x_test).shape[1:]} inputs, "
                          f"training rows {x_train.shape[1:]}")
    if len(x_train) < 10:
        raise MRHNetError(f"baseline needs at least 10 training voxels, got {len(x_train)}")
    from threadpoolctl import threadpool_limits

    rows = sample_rows(len(x_train), max_samples, seed)
    with threadpool_limits(limits=threads):
        model = make_model(kind, seed).fit(x_train[rows], y_train[rows])
        return model.predict(np.asarray(x_test)).astype(np.float32)


def training_rows(stack: np.ndarray, mask: np.ndarray, targets: Mapping[str, np.ndarray], max_rows: int,
                  seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A seeded sample of at most ``max_rows`` masked voxels of one training subject: (inputs (n, C),
    {target: (n,)})."""
    mask = np.asarray(mask, dtype=bool)
    flat = np.flatnonzero(mask)
    pick = flat[sample_rows(len(flat), max_rows, seed)]
    x = np.ascontiguousarray(stack.reshape(stack.shape[0], -1)[:, pick].T, dtype=np.float32)
    return x, {t: np.asarray(v, dtype=np.float32).reshape(-1)[pick] for t, v in targets.items()}


def baseline_maps(x_train: np.ndarray, y_train: Mapping[str, np.ndarray], test_stack: np.ndarray,
                  test_mask: np.ndarray, kinds: Sequence[str] = BASELINES, *, seed: int = 0,
                  max_samples: int = DEFAULT_MAX_SAMPLES) -> dict[str, dict[str, np.ndarray]]:
    """Baseline maps of the test subject: ``{kind: {target: (X, Y, Z) float32, 0 outside test_mask}}``,
    fitted on the rows ``x_train`` (N, C) -> ``y_train[target]`` (N,)."""
    x_test = centre_features(test_stack, test_mask)
    test_mask = np.asarray(test_mask, dtype=bool)
    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in kinds}
    for target, y in y_train.items():
        for kind in kinds:
            vol = np.zeros(test_mask.shape, dtype=np.float32)
            vol[test_mask] = fit_predict(kind, x_train, y, x_test, seed=seed, max_samples=max_samples)
            out[kind][target] = vol
    return out


def subject_baselines(train_subjects: Sequence, test_subject, targets: Sequence[str],
                      kinds: Sequence[str] = BASELINES, *, seed: int = 0, max_samples: int = DEFAULT_MAX_SAMPLES,
                      protocol=None) -> dict[str, dict[str, np.ndarray]]:
    """Baselines for ``test_subject`` trained on ``train_subjects`` (subject objects that hold each of
    ``targets``), on the inputs of ``protocol`` (default: the test subject's own raw channels) normalised
    by the engine (:meth:`Subject.inputs`); each training subject gives an equal share of the at most
    ``max_samples`` training voxels. Refuses training subjects without a target or with other inputs."""
    from ..data.protocol import check_compatible

    if not train_subjects:
        raise MRHNetError("baselines need at least one training subject")
    if max_samples <= 0:
        raise MRHNetError(f"baseline sample size {max_samples} must be positive")
    protocol = protocol if protocol is not None else test_subject.protocol()
    for s in train_subjects:
        lacking = [t for t in targets if t not in s.images]
        if lacking:
            raise MRHNetError(f"baseline training subject {s.name or '?'} has no {', '.join(lacking)} target "
                              f"(expected {lacking[0]}.nii.gz in its folder)")
        try:
            check_compatible(protocol, s.protocol(protocol.input_kind))
        except MRHNetError as exc:
            raise MRHNetError(f"baseline training subject {s.name or '?'}: {exc}") from None
    share = -(-max_samples // len(train_subjects))
    xs, ys = [], {t: [] for t in targets}
    for k, s in enumerate(train_subjects):
        x, y = training_rows(s.inputs(protocol), s.mask, {t: s.target(t) for t in targets}, share, seed + k)
        xs.append(x)
        for t in targets:
            ys[t].append(y[t])
    return baseline_maps(np.concatenate(xs), {t: np.concatenate(v) for t, v in ys.items()},
                         test_subject.inputs(protocol), test_subject.mask, kinds, seed=seed, max_samples=max_samples)
