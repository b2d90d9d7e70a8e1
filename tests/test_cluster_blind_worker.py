"""A worker of a cluster that cannot read the LMDB the run names (its node started in a mount
namespace where the data folder is empty) is one line naming the path and exit 2. In a module
of its own, so that no other test cluster runs beside this one."""
import pathlib
import shutil

import pytest

from ray_cluster import RayCluster, can_hide_folders
from ristretto_py.cli import evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL = EXAMPLE / "lenet_train_test.prototxt"
WEIGHTS = EXAMPLE / "lenet_fashion.caffemodel"
TEST_LMDB = EXAMPLE / "fashion_test_lmdb"


@pytest.mark.skipif(not can_hide_folders(), reason="this machine lets no process mount over a "
                                                   "folder in a namespace of its own")
def test_a_worker_that_cannot_read_the_lmdb_is_one_line(tmp_path, capsys):
    hidden = tmp_path / "data"
    shutil.copytree(TEST_LMDB, hidden / "test_lmdb")
    text = MODEL.read_text().replace("examples/lenet_fashion/fashion_test_lmdb",
                                     str(hidden / "test_lmdb"))
    model = tmp_path / "net.prototxt"
    model.write_text(text)
    blind = RayCluster(nodes=1, hidden=[hidden])       # its processes see an empty data/
    try:
        code = evaluate.main([str(a) for a in ("--model", model, "--weights", WEIGHTS,
                                               "--iterations", 2, "--quiet", "--cluster",
                                               blind.address)])
        err = capsys.readouterr().err
    finally:
        blind.stop()
    assert code == 2
    assert err.count("\n") == 1
    assert f"{hidden / 'test_lmdb'}: layer 'data': LMDB database does not exist (on a worker" in err
