"""``--cluster`` on a real Ray cluster (a head and a second node on 127.0.0.1, started with
``ray start``, one worker each): every tool's answer, written files and report are the single
process's, byte for byte; a worker killed mid-task is retried with the same answer; a cluster
that cannot be reached is one line and exit 2; Ctrl-C stops the run and its workers. (A worker
that cannot read the LMDB: test_cluster_blind_worker.py, with no other cluster running.)"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_model
from ray_cluster import RayCluster, free_port
from ristretto_py.cli import analyze, evaluate, evaluate_lfw, quantize
from ristretto_py.cluster import parse_cluster
from ristretto_py.cluster.sources import plan_chunks
from ristretto_py.lmdb_data import DataLayerFeed
from ristretto_py.net import Layer
from ristretto_py.protos import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL = EXAMPLE / "lenet_train_test.prototxt"
WEIGHTS = EXAMPLE / "lenet_fashion.caffemodel"
TEST_LMDB = EXAMPLE / "fashion_test_lmdb"


@pytest.fixture(scope="module")
def cluster():
    started = RayCluster(nodes=2)
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)          # the example's LMDB paths are relative to the repository


def _run(main, argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and p.name != "run.json")


def _same_as_one_process(main, argv_for, tmp_path, capsys, where):
    """Run a tool alone and on the cluster ``where``; the printed lines and every written file
    (but run.json) must be equal. Returns the two output folders."""
    single, multi = tmp_path / "single", tmp_path / "cluster"
    single.mkdir()
    multi.mkdir()
    code, out_single, err = _run(main, argv_for(single), capsys)
    assert code == 0, err
    code, out_multi, err = _run(main, argv_for(multi) + ["--cluster", where], capsys)
    assert code == 0, err
    assert out_multi.replace(str(multi), "OUT") == out_single.replace(str(single), "OUT")
    assert _files(single) and _files(multi) == _files(single)
    for name in _files(single):
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
    return single, multi


def _run_record(folder):
    return json.loads((folder / "run.json").read_text())


def test_the_uniform_search_writes_the_same_files(cluster, tmp_path, capsys):
    def argv(out):
        return ["--model", MODEL, "--weights", WEIGHTS, "--model_quantized", out / "q.prototxt",
                "--trimming_mode", "dynamic_fixed_point", "--iterations", 6, "--all_layers",
                "--quiet", "--report", out / "report"]
    single, multi = _same_as_one_process(quantize.main, argv, tmp_path, capsys, cluster.address)
    record = _run_record(multi / "report")
    assert (record["cluster"], record["workers"], record["nodes"]) == (cluster.address, 2, 2)
    assert record["candidates"] >= 10 and record["wall_seconds"] > 0
    assert _run_record(single / "report")["workers"] == 1


def test_the_per_layer_search_writes_the_same_files(cluster, tmp_path, capsys):
    def argv(out):
        return ["--model", MODEL, "--weights", WEIGHTS, "--model_quantized", out / "q.prototxt",
                "--trimming_mode", "dynamic_fixed_point", "--search", "per_layer",
                "--iterations", 3, "--quiet", "--report", out / "report"]
    _same_as_one_process(quantize.main, argv, tmp_path, capsys, cluster.address)


def test_the_sensitivity_analysis_is_the_same(cluster, tmp_path, capsys):
    def argv(out):
        return ["--model", MODEL, "--weights", WEIGHTS, "--iterations", 3, "--widths", "8,4,2",
                "--quiet", "--report", out / "report"]
    _same_as_one_process(analyze.main, argv, tmp_path, capsys, cluster.address)


def test_a_search_on_images_from_the_object_store(cluster, fashion_lfw, tmp_path, capsys):
    folder = fashion_lfw / "lfw" / sorted(os.listdir(fashion_lfw / "lfw"))[0]

    def argv(out):
        return ["--model", fashion_lfw / "deploy.prototxt", "--weights", WEIGHTS,
                "--model_quantized", out / "q.prototxt", "--trimming_mode",
                "dynamic_fixed_point", "--images", folder, "--gray", "--scale", 0.00390625,
                "--score", "agreement", "--batch_size", 4, "--quiet"]
    _same_as_one_process(quantize.main, argv, tmp_path, capsys, cluster.address)


def test_the_kmeans_search_writes_the_same_weights(cluster, tmp_path, capsys):
    rng = np.random.default_rng(3)
    model, weights = write_model(tmp_path, f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
          transform_param {{ scale: 0.00390625 }}
          data_param {{ source: "{TEST_LMDB}" batch_size: 50 backend: LMDB }} }}
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param {{ num_output: 4 kernel_size: 5 stride: 2 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
          inner_product_param {{ num_output: 10 }} }}
        layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }}
        """, {"conv": [rng.normal(0, 0.2, (4, 1, 5, 5)), rng.normal(0, 0.1, 4)],
              "ip": [rng.normal(0, 0.05, (10, 576)), np.zeros(10)]})

    def argv(out):
        return ["--model", model, "--weights", weights, "--model_quantized", out / "q.prototxt",
                "--weights_quantized", out / "w.caffemodel", "--packed", out / "w.packed",
                "--trimming_mode", "kmeans", "--iterations", 4, "--error_margin", 1, "--quiet",
                "--report", out / "report"]
    _same_as_one_process(quantize.main, argv, tmp_path, capsys, cluster.address)


def test_lfw_verification_is_the_same(cluster, fashion_lfw, tmp_path, capsys):
    def argv(out):
        return ["--model", fashion_lfw / "deploy.prototxt", "--weights", WEIGHTS,
                "--feature_blob", "ip1", "--lfw_root", fashion_lfw / "lfw", "--pairs",
                fashion_lfw / "pairs.txt", "--gray", "--scale", 0.00390625, "--batch_size", 16,
                "--quiet", "--report", out / "report"]
    _same_as_one_process(evaluate_lfw.main, argv, tmp_path, capsys, cluster.address)


def test_evaluate_on_a_local_ray_with_two_workers(tmp_path, capsys):
    argv = ["--model", MODEL, "--weights", WEIGHTS, "--iterations", 7, "--json"]
    code, single, _ = _run(evaluate.main, argv, capsys)
    assert code == 0
    code, multi, err = _run(evaluate.main, argv + ["--cluster", "local:2"], capsys)
    assert code == 0, err
    assert multi == single and json.loads(multi)["images"] == 700
    assert "700 images on 2 workers" in err


def _worker_processes(state="forward"):
    """Process ids of our workers running ``state`` (Ray titles them ray::BatchWorker.forward)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    line = handle.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if line.startswith(f"ray::BatchWorker.{state}"):
                found.append(int(entry))
    return found


def _tool(*argv):
    return [sys.executable, "-m", "ristretto_py.cli.main", *map(str, argv)]


def test_a_worker_killed_mid_task_is_retried_with_the_same_answer(cluster):
    argv = ["evaluate", "--model", MODEL, "--weights", WEIGHTS, "--iterations", 100, "--quiet"]
    single = subprocess.run(_tool(*argv), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert single.returncode == 0, single.stderr
    run = subprocess.Popen(_tool(*argv, "--cluster", cluster.address), cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed, deadline = None, time.monotonic() + 120
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        busy = _worker_processes()
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    out, err = run.communicate(timeout=300)
    assert killed is not None, "no worker was seen at work: the evaluation ended too soon"
    assert run.returncode == 0, err
    assert out == single.stdout
    assert not os.path.exists(f"/proc/{killed}/cmdline") or killed not in _worker_processes()


def test_ctrl_c_stops_the_run_and_its_workers():
    run = subprocess.Popen(_tool("evaluate", "--model", MODEL, "--weights", WEIGHTS,
                                 "--iterations", 1000, "--quiet", "--cluster", "local:2"),
                           cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    busy, deadline = [], time.monotonic() + 120
    while not busy and run.poll() is None and time.monotonic() < deadline:
        busy = _worker_processes()
        time.sleep(0.01)
    assert busy, "the workers never started"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "evaluate: interrupted" in err
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in busy) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in busy if os.path.exists(f"/proc/{pid}")]


def test_a_cluster_that_cannot_be_reached_is_one_line(capsys):
    port = free_port()
    code, _, err = _run(evaluate.main, ["--model", MODEL, "--weights", WEIGHTS, "--cluster",
                                        f"ray://127.0.0.1:{port}"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and f"cannot reach the Ray client server at 127.0.0.1:{port}" in err


@pytest.mark.parametrize("spelling", ["local:0", "local", "ray://host", "http://h:1", "4"])
def test_a_bad_cluster_spelling_is_a_usage_error(spelling, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.build_parser().parse_args(["--model", str(MODEL), "--weights", str(WEIGHTS),
                                            "--cluster", spelling])
    assert stop.value.code == 2
    assert "--cluster" in capsys.readouterr().err


def test_device_cuda_is_refused_clearly_without_a_gpu(capsys):
    code, _, err = _run(evaluate.main, ["--model", MODEL, "--weights", WEIGHTS, "--device",
                                        "cuda"], capsys)
    assert code == 2 and "--device cuda runs onnxruntime's CUDA provider" in err
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return                                      # a GPU build: the next refusal does not apply
    code, _, err = _run(evaluate.main, ["--model", MODEL, "--weights", WEIGHTS, "--device",
                                        "cuda", "--backend", "onnxruntime"], capsys)
    assert code == 2 and "no CUDA provider" in err and "onnxruntime-gpu" in err


def test_chunks_cover_the_batches_in_order():
    for batches in (1, 2, 7, 50, 101):
        for workers in (1, 2, 3, 8):
            chunks = plan_chunks(batches, workers)
            assert [c.index for c in chunks] == list(range(len(chunks)))
            assert chunks[0].start == 0 and chunks[-1].stop == batches
            assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
            assert all(c.stop > c.start for c in chunks)
            assert [c.worker for c in chunks] == sorted(c.worker for c in chunks)


def test_cluster_spellings():
    assert str(parse_cluster("local:3")) == "local:3" and parse_cluster("local:3").workers == 3
    spec = parse_cluster("ray://10.0.0.5:10001")
    assert (spec.host, spec.port, spec.address) == ("10.0.0.5", 10001, "ray://10.0.0.5:10001")


@pytest.mark.parametrize("mirror_and_crop", [False, True])
def test_a_feed_that_skips_batches_reads_what_a_feed_from_the_start_reads(mirror_and_crop):
    """What a worker reads for batches 3 to 5 of a TRAIN feed (random mirror and crop drawn per
    image, as Caffe draws them; the database wraps around within them) is what one reader from
    the start reads there."""
    spec = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    spec.data_param.source, spec.data_param.batch_size = str(TEST_LMDB), 300
    spec.data_param.backend = caffe_pb2.DataParameter.LMDB
    spec.transform_param.scale = 0.00390625
    if mirror_and_crop:
        spec.transform_param.mirror, spec.transform_param.crop_size = True, 24
    layer = Layer(spec)
    whole = DataLayerFeed(layer, "TRAIN", seed=5)
    expected = [whole.next_batch() for _ in range(6)][3:]
    whole.close()
    part = DataLayerFeed(layer, "TRAIN", seed=5)
    part.skip(3)
    got = [part.next_batch() for _ in range(3)]
    part.close()
    for a, b in zip(expected, got):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
