"""Face verification on LFW pairs (DESIGN section 5): features from one blob of a net, Euclidean
distance, a threshold chosen on training pairs, accuracy per fold.

Files: images at ``ROOT/Name/Name_0001.jpg``. ``pairs.txt`` starts with ``FOLDS N``, then per fold
N matched lines ``name n1 n2`` and N mismatched lines ``name1 n1 name2 n2``. ``pairsDevTrain.txt``
and ``pairsDevTest.txt`` start with one count N, then N matched and N mismatched lines.

Protocols: ``folds`` (the standard one: each fold's threshold comes from the other folds) and
``dev`` (one threshold from the dev training pairs for every fold). A pair is "same" when its
distance is at most the threshold; the threshold is the distinct training distance (or "none
same") with the best training accuracy, the smallest one on ties. The result is the mean fold
accuracy with its standard error std(ddof=1)/sqrt(folds), plus ROC AUC and equal error rate over
all pairs.
"""
import dataclasses
import os

import numpy as np

from ristretto_py.errors import FormatError, RistrettoError
from ristretto_py.progress import progress as show_progress
from ristretto_py.text_files import read_text


@dataclasses.dataclass(frozen=True)
class Pair:
    first: tuple        # (name, number)
    second: tuple
    same: bool


def image_path(root, name, number):
    return os.path.join(root, name, f"{name}_{number:04d}.jpg")


def _parse_pair(tokens, same, path, number):
    try:
        if same and len(tokens) == 3:
            return Pair((tokens[0], int(tokens[1])), (tokens[0], int(tokens[2])), True)
        if not same and len(tokens) == 4:
            return Pair((tokens[0], int(tokens[1])), (tokens[2], int(tokens[3])), False)
    except ValueError:
        pass
    want = "'name n1 n2'" if same else "'name1 n1 name2 n2'"
    raise FormatError(f"line {number}: expected a {'matched' if same else 'mismatched'} pair "
                      f"{want}, got {' '.join(tokens)!r}", path=str(path))


def _lines(path):
    text = read_text(path, "an LFW pairs file")
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _header(lines, path, count):
    if not lines:
        raise FormatError("empty pairs file", path=str(path))
    number, tokens = lines[0]
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        values = []
    if len(values) != count or min(values) <= 0:
        want = "'FOLDS PAIRS' (e.g. '10 300')" if count == 2 else "a pair count"
        raise FormatError(f"line {number}: expected {want}, got {' '.join(tokens)!r}", path=str(path))
    return values


def _read_block(lines, start, count, same, path):
    return [_parse_pair(tokens, same, path, number) for number, tokens in lines[start:start + count]]


def read_pairs(path, expected_folds=None):
    """The folds of ``pairs.txt``: a list of lists of Pair."""
    lines = _lines(path)
    folds, per = _header(lines, path, 2)
    if expected_folds is not None and folds != expected_folds:
        raise FormatError(f"declares {folds} folds; the protocol needs {expected_folds}", path=str(path))
    if len(lines) - 1 != folds * 2 * per:
        raise FormatError(f"declares {folds} folds of {per} matched and {per} mismatched pairs "
                          f"({folds * 2 * per} lines) but holds {len(lines) - 1}", path=str(path))
    result = []
    for f in range(folds):
        start = 1 + f * 2 * per
        result.append(_read_block(lines, start, per, True, path) +
                      _read_block(lines, start + per, per, False, path))
    return result


def read_dev_pairs(path):
    """The pairs of ``pairsDevTrain.txt`` / ``pairsDevTest.txt``."""
    lines = _lines(path)
    (count,) = _header(lines, path, 1)
    if len(lines) - 1 != 2 * count:
        raise FormatError(f"declares {count} matched and {count} mismatched pairs but holds "
                          f"{len(lines) - 1} lines", path=str(path))
    return _read_block(lines, 1, count, True, path) + _read_block(lines, 1 + count, count, False, path)


def extract_features(runtime, input_blob, feature_blob, paths, prepare, batch=32, progress=False,
                     normalize=None, cluster=None):
    """{path: feature vector} for every image path, run in batches through ``runtime``, or with
    ``cluster`` = (pool, net handle, runtime options) on the workers of a
    ``ristretto_py.cluster`` pool, each reading and preparing its own images."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FormatError(f"image missing ({len(missing)} in all)", path=missing[0])
    if cluster is not None:
        return _cluster_features(cluster, input_blob, feature_blob, paths, prepare, batch,
                                 normalize)
    features = {}
    starts = show_progress(range(0, len(paths), batch), "features", "batch", progress)
    first_shape = None
    for start in starts:
        chunk = paths[start:start + batch]
        prepared = [prepare(p) for p in chunk]
        if first_shape is None:
            first_shape = prepared[0].shape
        for path, array in zip(chunk, prepared):
            if array.shape[1:] != first_shape[1:]:
                raise FormatError(f"image is {array.shape[3]}x{array.shape[2]} but "
                                  f"{paths[0]} is {first_shape[3]}x{first_shape[2]}: give "
                                  "--resize W,H to bring every image to the net's input size",
                                  path=path)
        data = np.concatenate(prepared)
        blobs = runtime.forward({input_blob: data})
        if feature_blob not in blobs:
            raise RistrettoError(f"the net has no blob '{feature_blob}'")
        features.update(zip(chunk, _feature_rows(blobs[feature_blob], len(chunk), normalize)))
    return features


def _feature_rows(values, count, normalize):
    values = np.asarray(values, np.float64).reshape(count, -1)
    if normalize == "l2":
        values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    return values


def _cluster_features(cluster, input_blob, feature_blob, paths, prepare, batch, normalize):
    from ristretto_py.cluster.sources import ImageSource
    pool, handle, options = cluster
    source = ImageSource(paths, input_blob, prepare, batch)
    outputs = pool.gather(pool.forward(source, handle, [feature_blob], options), "features")
    features = {}
    for start, blobs in zip(range(0, len(paths), batch), outputs):
        chunk = paths[start:start + batch]
        features.update(zip(chunk, _feature_rows(blobs[feature_blob], len(chunk), normalize)))
    return features


def distances(pairs, features, root):
    a = np.stack([features[image_path(root, *p.first)] for p in pairs])
    b = np.stack([features[image_path(root, *p.second)] for p in pairs])
    return np.linalg.norm(a - b, axis=1)


def best_threshold(dist, same):
    """(threshold, training accuracy): the best of every distinct distance (and -inf)."""
    dist, same = np.asarray(dist, np.float64), np.asarray(same, bool)
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    last = np.r_[d[1:] != d[:-1], True]          # the last position of each distinct value
    same_le = np.cumsum(s)[last]
    diff_le = np.cumsum(~s)[last]
    correct = same_le + (np.count_nonzero(~s) - diff_le)
    candidates = np.r_[-np.inf, d[last]]
    correct = np.r_[np.count_nonzero(~s), correct]
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best]) / d.size


def accuracy(dist, same, threshold):
    return float(np.mean((np.asarray(dist) <= threshold) == np.asarray(same, bool)))


def roc(dist, same):
    """(false positive rates, true positive rates, AUC, EER) with "same" when d <= threshold."""
    dist, same = np.asarray(dist, np.float64), np.asarray(same, bool)
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    last = np.r_[d[1:] != d[:-1], True]
    tpr = np.r_[0.0, np.cumsum(s)[last] / max(s.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(~s)[last] / max((~s).sum(), 1)]
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return fpr, tpr, auc, float((fpr[i] + fnr[i]) / 2)


@dataclasses.dataclass
class VerificationResult:
    fold_accuracies: list
    thresholds: list
    mean: float
    standard_error: float
    auc: float
    eer: float
    protocol: str


def verify(fold_distances, fold_same, protocol="folds", dev=None):
    """Accuracy per fold: thresholds from the other folds, or from ``dev`` = (dist, same)."""
    accuracies, thresholds = [], []
    for i, (d, s) in enumerate(zip(fold_distances, fold_same)):
        if protocol == "dev":
            threshold, _ = best_threshold(*dev)
        else:
            others = [j for j in range(len(fold_distances)) if j != i]
            threshold, _ = best_threshold(np.concatenate([fold_distances[j] for j in others]),
                                          np.concatenate([fold_same[j] for j in others]))
        thresholds.append(threshold)
        accuracies.append(accuracy(d, s, threshold))
    values = np.array(accuracies)
    _, _, auc, eer = roc(np.concatenate(fold_distances), np.concatenate(fold_same))
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return VerificationResult(accuracies, thresholds, float(values.mean()), se, auc, eer, protocol)
