"""``ristretto <command> [flags]``: one entry point in front of the tools (``ristretto quantize``
is ``tools/quantize``, as Ristretto's own ``ristretto quantize``)."""
import importlib
import sys

COMMANDS = {"quantize": "quantize", "evaluate": "evaluate", "info": "info", "forward": "forward",
            "export_onnx": "export_onnx", "export_caffe": "export_caffe", "fetch_models": "fetch_models", "fold_bn": "fold_bn",
            "kmeans": "kmeans", "quantize_weights": "quantize_weights", "analyze": "analyze",
            "evaluate_lfw": "evaluate_lfw", "convert_keras": "convert_keras",
            "convert_onnx": "convert_onnx", "convert_tf": "convert_tf",
            "convert_tflite": "convert_tflite",
            "convert_imageset": "convert_imageset", "make_lenet_fashion": "make_lenet_fashion", "train": "train"}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ristretto <command> [flags]\ncommands: " + ", ".join(sorted(COMMANDS)))
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"ristretto: error: unknown command '{command}' (commands: {', '.join(sorted(COMMANDS))})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"ristretto_py.cli.{COMMANDS[command]}")
    return module.main(argv[1:], prog=f"ristretto {command}")


if __name__ == "__main__":
    sys.exit(main())
