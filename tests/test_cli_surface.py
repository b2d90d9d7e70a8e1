"""One command-line surface for every tool: Caffe's flag spellings (one dash, ``--flag=value``,
hyphens for underscores, ``--switch=true``), range-checked numbers, help text for every flag,
usage lines that name the command as called, ``--gpu`` accepted with a clear word."""
import importlib
import subprocess
import sys

import pytest

from ristretto_py.cli.main import COMMANDS

from test_cli import ROOT, run_tool

EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"


def parser_of(command):
    return importlib.import_module(f"ristretto_py.cli.{COMMANDS[command]}").build_parser()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help_and_an_underscore_name(command):
    parser = parser_of(command)
    for action in parser._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            if option.startswith("--"):
                assert "-" not in option[2:], f"{command}: {option} is not Caffe's spelling"


@pytest.mark.parametrize("command", ["quantize", "evaluate", "kmeans"])
def test_usage_names_the_command_as_called(command, capsys):
    from ristretto_py.cli import main as entry
    assert entry.main([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: ristretto {command} ")
    result = run_tool(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {command} ")


def test_caffe_spellings_read_as_the_documented_ones():
    parser = parser_of("evaluate")
    documented = parser.parse_args(["--model", str(MODEL), "--weights", str(WEIGHTS),
                                    "--iterations", "3", "--acc_bits", "32", "--quiet"])
    spellings = [
        ["-model", str(MODEL), "-weights", str(WEIGHTS), "-iterations", "3", "-acc_bits", "32",
         "-quiet"],                                                   # caffe test's style
        [f"--model={MODEL}", f"--weights={WEIGHTS}", "--iterations=3", "--acc-bits=32",
         "--quiet=true"],
        [f"-model={MODEL}", "--weights", str(WEIGHTS), "--iterations", "3", "--acc-bits", "32",
         "--quiet=1"],
    ]
    for argv in spellings:
        assert parser.parse_args(argv) == documented, argv
    assert parser.parse_args(["--model", str(MODEL), "--weights", str(WEIGHTS),
                              "--quiet=false"]).quiet is False


def test_old_hyphen_flags_and_the_batch_alias_still_work():
    kmeans = parser_of("kmeans").parse_args(["--model", str(MODEL), "--weights", str(WEIGHTS),
                                             "--clusters", "4", "--out-weights", "/tmp/x.caffemodel"])
    assert kmeans.out_weights == "/tmp/x.caffemodel"
    lfw = ["--model", str(MODEL), "--weights", str(WEIGHTS), "--feature-blob", "ip1",
           "--lfw-root", str(ROOT), "--pairs", str(MODEL)]
    assert parser_of("evaluate_lfw").parse_args(lfw + ["--batch", "7"]).batch_size == 7
    assert parser_of("evaluate_lfw").parse_args(lfw + ["--batch_size", "9"]).batch_size == 9


@pytest.mark.parametrize("command, argv, fragment", [
    ("quantize", ["--seed", "-1"], "--seed: -1 is out of range: from 0 to 4294967295"),
    ("quantize", ["--error_margin", "nan"], "--error_margin: 'nan' is not a finite number"),
    ("quantize", ["--error_margin", "inf"], "--error_margin: 'inf' is not a finite number"),
    ("quantize", ["--error_margin", "-1"], "--error_margin: -1 is out of range: must not be negative"),
    ("quantize", ["--iterations", "0"], "--iterations: 0 is out of range: must be at least 1"),
    ("quantize", ["--batch_size", "0"], "--batch_size: 0 is out of range: must be at least 1"),
    ("quantize", ["--percentile", "0"], "--percentile: 0 is out of range"),
    ("quantize_weights", ["--calibration-iterations", "0", "--method", "linear:4"],
     "--calibration_iterations: 0 is out of range: must be at least 1"),
    ("evaluate", ["--acc_bits", "65"], "--acc_bits: 65 is out of range: from 8 to 64"),
])
def test_bad_numbers_are_one_usage_line(tmp_path, command, argv, fragment):
    outputs = {"quantize": ["--model_quantized", tmp_path / "q.prototxt", "--trimming_mode",
                            "minifloat"],
               "quantize_weights": ["--out_weights", tmp_path / "w.caffemodel"], "evaluate": []}
    result = run_tool(command, "--model", MODEL, "--weights", WEIGHTS, *outputs[command], *argv)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{command}: error: argument ") and fragment in lines[0]
    assert f"(see {command} --help)" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_convert_imageset_names_the_bad_width(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 0\n")
    result = run_tool("convert_imageset", tmp_path, tmp_path / "list.txt", tmp_path / "db",
                      "--resize_width", "-5", "--resize_height", "10")
    assert result.returncode == 2
    assert "--resize_width: -5 is out of range: must not be negative" in result.stderr
    assert "neither" not in result.stderr


def test_gpu_is_accepted_and_the_run_stays_on_the_cpu():
    result = run_tool("evaluate", "-model", MODEL, "-weights", WEIGHTS, "-iterations", "1",
                      "-gpu", "0")
    assert result.returncode == 0, result.stderr
    assert "100 images" in result.stdout and "accuracy = " in result.stdout
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        warning = [l for l in result.stderr.splitlines() if "warning" in l]
        assert warning == ["evaluate: warning: --gpu 0: running on the CPU: the numpy backend "
                           "runs on the CPU (--backend onnxruntime uses a GPU when onnxruntime "
                           "has a CUDA provider)"]
        result = run_tool("evaluate", "-model", MODEL, "-weights", WEIGHTS, "-iterations", "1",
                          "-gpu", "0", "--backend", "onnxruntime")
        assert result.returncode == 0 and "this onnxruntime has no CUDA provider" in result.stderr


def test_ristretto_entry_point_reports_errors_under_its_command_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ristretto_py.cli.main", "kmeans", "--model",
                             str(MODEL), "--weights", str(WEIGHTS), "--clusters", "3",
                             "--out_weights", str(tmp_path / "k.caffemodel")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("ristretto kmeans: error: ") and "power of two" in result.stderr


def test_values_that_start_with_a_dash_are_values():
    args = parser_of("forward").parse_args(["--model", "m", "--weights", "w", "--input", "x.png",
                                            "--output", "/tmp/o.npz", "--mean", "-1,2,3",
                                            "--scale", "-0.5"])
    assert args.mean == (-1.0, 2.0, 3.0) and args.scale == -0.5
    with pytest.raises(SystemExit):        # a misspelt flag is not swallowed as a value
        parser_of("forward").parse_args(["--model", "--weigths", "w"])


def test_warnings_are_one_line_each(capsys):
    import warnings

    from ristretto_py import RistrettoWarning
    from ristretto_py.cli.common import run

    def tool(argv):
        warnings.warn("weights ignored:\n  ip3", RistrettoWarning)
        warnings.warn("overflow encountered in matmul", RuntimeWarning)

    assert run(tool, [], prog="t") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "t: warning: weights ignored: ip3"
    assert lines[1].startswith("t: warning: overflow encountered in matmul (RuntimeWarning in ")
    assert len(lines) == 2
