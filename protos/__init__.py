"""Caffe's protobuf schema (BVLC + SSD + Ristretto fields) and its generated Python module."""
from . import caffe_pb2  # noqa: F401
