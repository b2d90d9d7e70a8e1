"""Regenerate ``caffe_pb2.py`` from ``caffe.proto`` (run after editing the schema).

Usage: ``python -m ristretto_py.protos.regenerate`` (needs the ``dev``/``test`` extra, which
brings ``grpcio-tools``). The module is committed so that users never need a compiler.
"""
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE / "caffe.proto"


def compile_schema(out_dir):
    """Compile caffe.proto into ``out_dir``; return the path of the generated module."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("regenerating needs grpcio-tools: pip install -e '.[test]'") from exc
    code = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out_dir}", str(PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO} (exit {code})")
    return pathlib.Path(out_dir) / "caffe_pb2.py"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        generated = compile_schema(tmp).read_bytes()
    target = HERE / "caffe_pb2.py"
    target.write_bytes(generated)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
