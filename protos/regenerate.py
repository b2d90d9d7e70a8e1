"""Regenerate the committed ``*_pb2.py`` modules from the ``.proto`` schemas next to them (run
after editing a schema).

Usage: ``python -m ristretto_py.protos.regenerate`` (needs the ``test`` extra, which brings
``grpcio-tools``). The modules are committed so that users never need a compiler.
"""
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SCHEMAS = ("caffe", "keras_saved_metadata")


def compile_schema(out_dir, name="caffe"):
    """Compile ``<name>.proto`` into ``out_dir``; return the path of the generated module.

    protoc runs in its own process: its C++ protobuf must not meet another copy loaded by this
    one (TensorFlow brings one, and the two crash together)."""
    if importlib.util.find_spec("grpc_tools") is None:  # pragma: no cover - depends on the environment
        raise SystemExit("regenerating needs grpcio-tools: pip install -e '.[test]'")
    proto = HERE / f"{name}.proto"
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}",
                           f"--python_out={out_dir}", str(proto)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed on {proto} (exit {done.returncode}): {done.stderr.strip()}")
    return pathlib.Path(out_dir) / f"{name}_pb2.py"


def main():
    for name in SCHEMAS:
        with tempfile.TemporaryDirectory() as tmp:
            generated = compile_schema(tmp, name).read_bytes()
        target = HERE / f"{name}_pb2.py"
        target.write_bytes(generated)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
