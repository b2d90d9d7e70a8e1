"""Importers that turn other frameworks' model files into Caffe nets (``Net``)."""
