"""Read and write Caffe files: text ``.prototxt`` nets and binary ``.caffemodel`` weights.

Readers return an upgraded ``NetParameter`` (see ``upgrade``) or raise ``FormatError`` naming
the file (and the line, for text). Writers never touch an existing file until the new one is
complete (``atomic``). Everything above this module works on ``Net``, not on these messages.
"""
import re

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from . import atomic
from .errors import FormatError
from .legacy_ristretto import recover_quantization_params, upgrade_text
from .protos import caffe_pb2
from .upgrade import upgrade_net


def read_bytes(path, what="file"):
    """The bytes of ``path``; a missing file, a folder or an unreadable one is a FormatError
    naming it (``what`` says what it should be, e.g. "solver file")."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FormatError(f"no such {what}", path=path) from None
    except IsADirectoryError:
        raise FormatError(f"is a directory, not a {what}", path=path) from None
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror}", path=path) from None



def parse_net_text(text, path=None, message=None):
    """Parse prototxt text into ``message`` (a new NetParameter by default), upgraded."""
    net = caffe_pb2.NetParameter() if message is None else message
    try:
        text_format.Parse(upgrade_text(text), net)
    except text_format.ParseError as exc:
        raise FormatError(_describe_text_error(exc), path=path) from None
    except (ValueError, RecursionError) as exc:  # e.g. overflowing numbers, absurd nesting
        raise FormatError(f"malformed prototxt: {exc}", path=path) from None
    if isinstance(net, caffe_pb2.NetParameter):
        upgrade_net(net, path)
    return net


def _describe_text_error(exc):
    line, column = getattr(exc, "GetLine", lambda: None)(), getattr(exc, "GetColumn", lambda: None)()
    text = str(exc)
    text = re.sub(r"^\d+:\d+\s*:\s*", "", text)
    if line:
        return f"line {line}, column {column}: malformed prototxt: {text}"
    return f"malformed prototxt: {text}"


def read_net_text(path):
    """Read a ``.prototxt`` net definition; return an upgraded NetParameter."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"line {line}: not UTF-8 text (is this a binary caffemodel?)",
                          path=path) from None
    return parse_net_text(text, path)


def read_net_binary(path):
    """Read a binary ``.caffemodel``; return an upgraded NetParameter with its blobs."""
    data = read_bytes(path)
    net = caffe_pb2.NetParameter()
    if not data:
        raise FormatError("is empty, not a Caffe model", path=path)
    try:
        net.ParseFromString(data)
    except (pb_message.DecodeError, RecursionError, ValueError) as exc:
        raise FormatError(f"truncated or not a binary Caffe model ({exc})", path=path) from None
    if not len(net.layer) and not len(net.layers):
        raise FormatError("holds no layers: not a binary Caffe model", path=path)
    upgrade_net(net, path)
    recover_quantization_params(net)
    for layer in net.layer:
        if not layer.name:
            raise FormatError("holds a layer without a name: truncated or not a Caffe model",
                              path=path)
    return net


def read_blob_proto(path):
    """Read a ``.binaryproto`` BlobProto (e.g. a mean image); return it as float32 array."""
    data = read_bytes(path)
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except (pb_message.DecodeError, RecursionError, ValueError) as exc:
        raise FormatError(f"truncated or not a BlobProto ({exc})", path=path) from None
    return blob_to_array(blob, path=path)


def write_net_text(net, path):
    """Write a NetParameter as prototxt (without blobs), atomically."""
    atomic.write_text(path, text_format.MessageToString(net))


def write_net_binary(net, path):
    """Write a NetParameter as binary caffemodel, atomically."""
    atomic.write_bytes(path, net.SerializeToString())


def blob_shape(blob):
    """The shape a BlobProto declares: ``shape.dim``, or the legacy 4-D num/channels/h/w."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if blob.num or blob.channels or blob.height or blob.width:
        return (blob.num, blob.channels, blob.height, blob.width)
    return None


def blob_to_array(blob, path=None, layer=None):
    """A BlobProto's values as a float32 array of its declared shape."""
    if len(blob.double_data):
        values = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.asarray(blob.data, dtype=np.float32)
    shape = blob_shape(blob)
    if shape is None:
        shape = (values.size,)
    count = int(np.prod(shape, dtype=np.int64))
    if count != values.size:
        raise FormatError(
            f"blob declares shape {list(shape)} ({count} values) but holds {values.size}: "
            "truncated or corrupt", path=path, layer=layer)
    return values.reshape(shape)


def array_to_blob(array):
    """A float32 array as a BlobProto with ``shape`` (as Caffe's Blob::ToProto writes it)."""
    blob = caffe_pb2.BlobProto()
    array = np.ascontiguousarray(array, dtype="<f4")
    blob.shape.dim.extend(int(d) for d in array.shape)
    # Field 5 (data) is packed floats: its wire form is the raw little-endian bytes, which is
    # far faster to hand over than millions of Python floats.
    payload = array.tobytes()
    blob.MergeFromString(b"\x2a" + _varint(len(payload)) + payload)
    return blob


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
