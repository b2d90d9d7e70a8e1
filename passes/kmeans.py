"""Weight sharing by k-means (Deep Compression), per layer, per layer type, per regex group or
with one codebook for all (DESIGN section 3).

Each group's weights (biases stay float32) are clustered in 1-D with scikit-learn's ``KMeans``
(``n_init=1``) from one of Deep Compression's three initialisations: linear over [min, max] (the
default, the best of them), density (quantiles of the weights, evenly spaced on the CDF) or
random (K distinct weights drawn with the seed). Linear and density are deterministic, and
Lloyd's iterations from a given start are too, so only ``random`` depends on the seed. A group with at most K distinct values keeps them exactly. The codebook can be stored as
float32, or trimmed with Ristretto's mini-float rule (the hybrid scheme) or to dynamic fixed point;
each weight becomes its centroid, so the result is an ordinary caffemodel.

Compression ratio of n weights of b bits with K clusters and codebook entries of c bits:
``r = n*b / (n*log2(K) + K*c)``; model totals add the float32 biases to both sides.
"""
import dataclasses
import math
import re
import warnings

import numpy as np

from ristretto_py import numerics
from ristretto_py.errors import NetError, RistrettoError
from ristretto_py.progress import progress as show_progress

CLUSTERED_TYPES = ("Convolution", "InnerProduct", "Deconvolution", "ConvolutionRistretto",
                   "FcRistretto", "DeconvolutionRistretto")
SCOPES = ("layer", "global", "type")
INITS = ("linear", "density", "random")
FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class Codebook:
    """How centroids are stored: ``float32``, ``minifloat`` (exp_bits, mant_bits) or ``fixed``
    (bit width; the fractional length makes the largest centroid fit, Ristretto's parameter rule)."""
    kind: str = "float32"
    exp_bits: int = 0
    mant_bits: int = 0
    bit_width: int = 32

    @classmethod
    def parse(cls, text):
        kind, _, rest = text.partition(":")
        try:
            if kind == "float32" and not rest:
                return cls()
            if kind == "minifloat":
                exp_bits, mant_bits = (int(v) for v in rest.split(","))
                if exp_bits < 1 or mant_bits < 0 or exp_bits > 8 or mant_bits > 23:
                    raise ValueError
                return cls("minifloat", exp_bits=exp_bits, mant_bits=mant_bits,
                           bit_width=1 + exp_bits + mant_bits)
            if kind == "fixed":
                bits = int(rest)
                if not 2 <= bits <= 32:
                    raise ValueError
                return cls("fixed", bit_width=bits)
        except ValueError:
            pass
        raise RistrettoError(f"codebook {text!r}: use float32, minifloat:E,M (E 1-8, M 0-23) "
                             "or fixed:BW (2-32)")

    def trim(self, centroids):
        centroids = np.asarray(centroids, np.float32)
        if self.kind == "minifloat":
            return numerics.trim_minifloat(centroids, self.exp_bits, self.mant_bits)
        if self.kind == "fixed":
            top = float(np.max(np.abs(centroids))) if centroids.size else 0.0
            il = math.ceil(math.log2(top) + 1) if top > 0 else 1
            return numerics.trim_fixed_point(centroids, self.bit_width, self.bit_width - il)
        return centroids

    def __str__(self):
        if self.kind == "minifloat":
            return f"minifloat:{self.exp_bits},{self.mant_bits}"
        return "float32" if self.kind == "float32" else f"fixed:{self.bit_width}"


@dataclasses.dataclass
class Cluster:
    """One codebook and the layers it serves; ``indices`` maps layer name -> int array."""
    name: str
    layers: list
    centroids: np.ndarray
    indices: dict
    k: int


def check_clusters(k):
    if k < 2 or k & (k - 1):
        raise RistrettoError(f"--clusters must be a power of two (2, 4, 8, ...) so that indices "
                             f"fill whole bits; {k} is not")
    return int(math.log2(k))


def select_layers(net, names=None):
    """Layers whose weights get clustered: the named ones, or every conv/fc layer."""
    candidates = [l for l in net.layers if l.type in CLUSTERED_TYPES and l.blobs]
    if names is None:
        return candidates
    by_name = {l.name: l for l in net.layers}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NetError(f"no layer named {', '.join(missing)}", path=net.source)
    chosen = [by_name[n] for n in names]
    bad = [l.name for l in chosen if l.type not in CLUSTERED_TYPES or not l.blobs]
    if bad:
        raise NetError(f"layers {', '.join(bad)} have no weights to cluster", path=net.source)
    return chosen


def group_layers(layers, scope):
    """{group name: [layers]} for a scope: layer, global, type or regex:PATTERN. With a regex,
    the first capture group (or the whole match) names the group; unmatched layers stay float."""
    if scope == "layer":
        return {l.name: [l] for l in layers}
    if scope == "global":
        return {"global": list(layers)}
    if scope == "type":
        groups = {}
        for l in layers:
            groups.setdefault(l.type.replace("Ristretto", "").replace("Fc", "InnerProduct"), []).append(l)
        return groups
    if scope.startswith("regex:"):
        try:
            pattern = re.compile(scope[len("regex:"):])
        except re.error as exc:
            raise RistrettoError(f"--scope {scope!r}: bad regular expression ({exc})") from None
        groups = {}
        for l in layers:
            match = pattern.search(l.name)
            if match:
                key = match.group(1) if pattern.groups and match.group(1) else match.group(0)
                groups.setdefault(key, []).append(l)
        if not groups:
            raise RistrettoError(f"--scope {scope!r} matches no layer")
        return groups
    raise RistrettoError(f"--scope must be layer, global, type or regex:PATTERN, not {scope!r}")


def initial_centroids(values, distinct, k, init="linear", seed=0):
    """K starting centroids (float64, K x 1) of the 1-D ``values`` (``distinct``: their sorted
    distinct values, more than K of them)."""
    if init == "linear":
        start = np.linspace(values.min(), values.max(), k, dtype=np.float64)
    elif init == "density":
        start = np.quantile(values.astype(np.float64), np.linspace(0.0, 1.0, k))
    elif init == "random":
        start = np.sort(np.random.default_rng(seed).choice(distinct, size=k, replace=False))
    else:
        raise RistrettoError(f"k-means initialisation must be one of {', '.join(INITS)}, not {init!r}")
    return np.asarray(start, np.float64).reshape(-1, 1)


def kmeans_1d(values, k, seed, init="linear"):
    """(centroids sorted ascending, index of each value) by scikit-learn KMeans from ``init``."""
    from sklearn.cluster import KMeans
    values = np.asarray(values, np.float32).reshape(-1)
    distinct = np.unique(values)
    if distinct.size <= k:
        centroids = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1], np.float32)])
        return centroids, np.searchsorted(distinct, values).astype(np.int64)
    init = initial_centroids(values, distinct, k, init, seed)
    model = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed, algorithm="lloyd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "fewer distinct clusters than K" is handled below
        model.fit(values.reshape(-1, 1).astype(np.float64))
    order = np.argsort(model.cluster_centers_.ravel(), kind="stable")
    centroids = model.cluster_centers_.ravel()[order].astype(np.float32)
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return centroids, rank[model.labels_]


def cluster_net(net, k, scope="layer", layer_names=None, codebook=Codebook(), seed=0, progress=False,
                init="linear"):
    """(new Net with clustered weights, [Cluster]) for every group of the scope."""
    check_clusters(k)
    if init not in INITS:
        raise RistrettoError(f"k-means initialisation must be one of {', '.join(INITS)}, not {init!r}")
    groups = group_layers(select_layers(net, layer_names), scope)
    clusters = []
    for name, members in show_progress(list(groups.items()), f"k-means K={k}", "codebook",
                                       progress):
        values = np.concatenate([np.ravel(l.blobs[0]) for l in members])
        centroids, labels = kmeans_1d(values, k, seed, init)
        centroids = codebook.trim(centroids)
        indices, start = {}, 0
        for l in members:
            size = np.size(l.blobs[0])
            indices[l.name] = labels[start:start + size]
            start += size
        clusters.append(Cluster(name, [l.name for l in members], centroids, indices, k))
    return apply_clusters(net, clusters), clusters


def apply_clusters(net, clusters):
    """``net`` with each clustered weight blob replaced by its centroids."""
    replaced = {}
    for cluster in clusters:
        for name, index in cluster.indices.items():
            replaced[name] = cluster.centroids[index]
    layers = []
    for layer in net.layers:
        if layer.name in replaced:
            weights = replaced[layer.name].reshape(layer.blobs[0].shape).astype(np.float32)
            layer = layer.replace(blobs=(weights,) + tuple(layer.blobs[1:]))
        layers.append(layer)
    return net.with_layers(layers)


def compression(net, clusters, codebook_bits):
    """Per layer and total: n, K, index bits, codebook bits, r (biases in the totals)."""
    index_bits = {c.k: int(math.log2(c.k)) for c in clusters}
    rows, total_before, total_after = [], 0, 0
    by_layer = {name: c for c in clusters for name in c.layers}
    shared_counted = set()
    for layer in net.layers:
        if not layer.blobs:
            continue
        rest = sum(np.size(b) for b in layer.blobs[1:]) * FLOAT_BITS
        if layer.name not in by_layer:
            bits = sum(np.size(b) for b in layer.blobs) * FLOAT_BITS
            total_before += bits
            total_after += bits
            continue
        c = by_layer[layer.name]
        n = int(np.size(layer.blobs[0]))
        b = index_bits[c.k]
        codebook = c.k * codebook_bits
        r = n * FLOAT_BITS / (n * b + codebook)
        rows.append({"layer": layer.name, "codebook": c.name, "n": n, "k": c.k, "index_bits": b,
                     "codebook_bits": codebook_bits, "ratio": r})
        total_before += n * FLOAT_BITS + rest
        total_after += n * b + rest + (0 if c.name in shared_counted else codebook)
        shared_counted.add(c.name)
    return rows, {"bits_before": total_before, "bits_after": total_after,
                  "ratio": total_before / total_after if total_after else None}
