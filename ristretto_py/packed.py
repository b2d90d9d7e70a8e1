"""The packed weights file of a clustered net (``tools/kmeans --packed``): codebooks plus
bit-packed log2(K)-bit indices, and every other blob as float32, so that one file replaces the
caffemodel and rebuilds its weights exactly.

Layout (little-endian):
    b"RPYPACK1"                      magic and format version
    uint32  header length, then the header: UTF-8 JSON
            {"codebooks": [{"name", "k", "offset"}],
             "blobs": [{"layer", "index", "shape", "kind": "indices"|"float32",
                        "codebook", "bits", "offset", "nbytes"}]}
    payload: codebooks as float32, index streams (MSB first, padded to a byte), float blobs
Offsets count from the start of the payload.
"""
import json
import math
import struct

import numpy as np

from .atomic import atomic_output
from .errors import FormatError

MAGIC = b"RPYPACK1"


def pack_indices(indices, bits):
    """Bit-pack non-negative integers below 2**bits, most significant bit first."""
    indices = np.asarray(indices, np.uint32).reshape(-1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    return np.packbits(((indices[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_indices(data, count, bits):
    bitstream = np.unpackbits(np.frombuffer(data, np.uint8))[:count * bits]
    if bitstream.size != count * bits:
        raise ValueError("index stream too short")
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return bitstream.reshape(count, bits).astype(np.int64) @ weights


def write_packed(path, net, clusters):
    """Write ``net`` (already clustered) with its clusters' codebooks and indices."""
    codebooks, blobs, chunks, offset = [], [], [], 0
    owner = {}
    for cluster in clusters:
        data = np.asarray(cluster.centroids, "<f4").tobytes()
        codebooks.append({"name": cluster.name, "k": cluster.k, "offset": offset})
        chunks.append(data)
        offset += len(data)
        for layer in cluster.layers:
            owner[layer] = cluster
    for layer in net.layers:
        for index, blob in enumerate(layer.blobs):
            entry = {"layer": layer.name, "index": index, "shape": list(np.shape(blob))}
            cluster = owner.get(layer.name) if index == 0 else None
            if cluster is not None:
                bits = int(math.log2(cluster.k))
                data = pack_indices(cluster.indices[layer.name], bits)
                entry.update(kind="indices", codebook=cluster.name, bits=bits)
            else:
                data = np.asarray(blob, "<f4").tobytes()
                entry.update(kind="float32")
            entry.update(offset=offset, nbytes=len(data))
            blobs.append(entry)
            chunks.append(data)
            offset += len(data)
    header = json.dumps({"codebooks": codebooks, "blobs": blobs}, separators=(",", ":")).encode()
    with atomic_output(path) as handle:
        handle.write(MAGIC + struct.pack("<I", len(header)) + header)
        for chunk in chunks:
            handle.write(chunk)


def read_packed(path):
    """{layer name: [float32 arrays]} rebuilt from a packed file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise FormatError("no such file", path=str(path)) from None
    if data[:8] != MAGIC or len(data) < 12:
        raise FormatError("not a ristretto-py packed weights file", path=str(path))
    (length,) = struct.unpack("<I", data[8:12])
    try:
        header = json.loads(data[12:12 + length].decode())
        payload = memoryview(data)[12 + length:]
        codebooks = {}
        for entry in header["codebooks"]:
            start = entry["offset"]
            codebooks[entry["name"]] = np.frombuffer(payload[start:start + 4 * entry["k"]], "<f4")
        layers = {}
        for entry in header["blobs"]:
            chunk = payload[entry["offset"]:entry["offset"] + entry["nbytes"]]
            if len(chunk) != entry["nbytes"]:
                raise ValueError("file ends inside a blob")
            count = int(np.prod(entry["shape"], dtype=np.int64))
            if entry["kind"] == "indices":
                values = codebooks[entry["codebook"]][unpack_indices(chunk, count, entry["bits"])]
            else:
                values = np.frombuffer(chunk, "<f4")
            layers.setdefault(entry["layer"], []).append(
                np.asarray(values, np.float32).reshape(entry["shape"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise FormatError(f"corrupt packed weights file ({exc})", path=str(path)) from None
    return layers


def net_with_packed(net, path):
    """``net`` (from its prototxt) with the blobs of a packed file."""
    from .errors import NetError
    stored = read_packed(path)
    layers = []
    for layer in net.layers:
        if layer.name in stored:
            blobs = stored[layer.name]
            expected = [tuple(np.shape(b)) for b in layer.blobs] if layer.blobs else None
            if expected is not None and [b.shape for b in blobs] != expected:
                raise NetError("the packed file's blob shapes do not match the net",
                               path=str(path), layer=layer.name)
            layer = layer.replace(blobs=blobs)
        layers.append(layer)
    return net.with_layers(layers)
