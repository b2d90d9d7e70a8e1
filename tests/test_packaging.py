"""The root folders protos/, passes/ and evaluators/ install as ristretto_py.* subpackages."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPORTS = ("import ristretto_py.protos.caffe_pb2, ristretto_py.passes, ristretto_py.evaluators, "
           "ristretto_py; print(ristretto_py.protos.caffe_pb2.__file__)")


def test_editable_install_imports_mapped_packages(tmp_path):
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert pathlib.Path(out.strip()).resolve() == ROOT / "protos" / "caffe_pb2.py"


@pytest.mark.slow
def test_normal_install_imports_mapped_packages(tmp_path):
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy of it, so that
    # running the tests leaves the checkout as it was.
    source, target = tmp_path / "source", tmp_path / "site"
    had_build = (ROOT / "build").exists()
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        ".cache", ".benchmarks", "report", "examples", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    assert (ROOT / "build").exists() == had_build
    assert (target / "ristretto_py" / "protos" / "caffe.proto").is_file()
    assert not (target / "passes").exists() and not (target / "protos").exists()
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                          + IMPORTS], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert pathlib.Path(out.strip()).resolve() == (target / "ristretto_py" / "protos" / "caffe_pb2.py").resolve()
