"""``tools/quantize --trimming_mode kmeans``: the number of k-means clusters searched like a bit
width. Index widths from 12 bits down (K = 4096, 2048, ...) are tried for all Convolution weights
(the rest float), stopping at the first failure, then the same for all InnerProduct weights, with
Ristretto's margin rule; the smallest passing width of each part is kept (none: float) and the
combination is scored once. The codebook scope (one per layer, per type, or one for all) and the
codebook format are the user's; the prototxt does not change, the weights do.

On a cluster the candidates overlap: while the workers score one K, this process clusters the
next (at most one clustering is wasted where the search stops)."""
from ristretto_py.passes.kmeans import Codebook, cluster_net

from .ristretto_quantize import Candidate, QuantizeResult

INDEX_BITS = tuple(range(12, 0, -1))
STAGES = (("conv_params", ("Convolution",)), ("fc_params", ("InnerProduct",)))


def search_kmeans(quantizer, scope="layer", codebook=Codebook(), seed=0):
    """Run the search; returns (QuantizeResult, clustered TEST net, clusters)."""
    float_net = quantizer.build(quantizer.param)
    baseline = quantizer.baseline()
    candidates, chosen = [], {}
    for stage, types in STAGES:
        names = [l.name for l in float_net.layers if l.type in types and l.blobs]
        chosen[stage] = None
        if not names:
            continue
        for bits, score in _scores(quantizer, float_net, stage, names, scope, codebook, seed):
            ok = quantizer.passes(score, baseline)
            candidates.append(Candidate(stage, bits, float(score), ok))
            if not ok:
                break
            chosen[stage] = bits
    clusters, net = [], float_net
    for stage, types in STAGES:
        bits = chosen[stage]
        if bits is not None:
            names = [l.name for l in float_net.layers if l.type in types and l.blobs]
            net, part = cluster_net(net, 2 ** bits, scope, names, codebook, seed)
            for cluster in part:      # codebook names stay unique across the two parts
                cluster.name = f"{stage}/{cluster.name}"
            clusters += part
    score = quantizer.evaluate(None, "k-means net", net=net)
    result = QuantizeResult("kmeans", float(baseline), candidates,
                            {k: (32 if v is None else v) for k, v in chosen.items()}, float(score),
                            quantizer.param, {}, {})
    return result, net, clusters


def _scores(quantizer, float_net, stage, names, scope, codebook, seed):
    """(index bits, score) of each candidate in INDEX_BITS order, computed as they are asked
    for; on a cluster the next candidate is clustered while the workers score this one."""
    def clustered(bits):
        return cluster_net(float_net, 2 ** bits, scope, names, codebook, seed)[0]

    def described(bits):
        return f"{stage} k-means {bits}-bit"

    if quantizer.pool is None:
        for bits in INDEX_BITS:
            yield bits, quantizer.evaluate(None, described(bits), net=clustered(bits))
        return
    pending = quantizer.submit(None, net=clustered(INDEX_BITS[0]))
    for position, bits in enumerate(INDEX_BITS):
        following = INDEX_BITS[position + 1] if position + 1 < len(INDEX_BITS) else None
        upcoming = clustered(following) if following is not None else None
        yield bits, quantizer.measure(quantizer.pool.gather(pending, described(bits)))
        if upcoming is not None:
            pending = quantizer.submit(None, net=upcoming)
