"""``tools/convert_keras``: a Keras model (Keras 3 ``.keras`` archive or legacy ``.h5``, read with
h5py, no TensorFlow needed; a Keras 2 SavedModel folder when TensorFlow is installed) as Caffe
files. Layers Caffe cannot reproduce exactly are refused with their name and the reason."""
import os
import sys

from ..convert.keras_file import read_keras_file
from ..convert.saved_model import read_saved_model
from ..convert.keras_to_caffe import keras_to_layers
from ..net import Net
from .common import make_parser, run
from .flag_types import number_list

PROG = "convert_keras"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("--input", required=True, metavar="MODEL",
                     help=".keras, .h5 or a Keras 2 SavedModel folder")
    parser.add_output("--out_model", required=True, metavar="PROTOTXT",
                      help="where to write the Caffe net description")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the Caffe weights")
    parser.add_argument("--input_shape", type=number_list((2, 4), int, "integers"), metavar="N,C,H,W",
                        help="the Caffe input shape (needed when the Keras input has free dimensions)")
    parser.add_argument("--name", help="the Caffe net's name (default: the file's stem)")
    return parser


def load_model(path):
    if os.path.isdir(path):
        return read_saved_model(path)
    return read_keras_file(path)


def convert_main(argv=None):
    args = build_parser().parse_args(argv)
    model = load_model(args.input)
    layers, outputs = keras_to_layers(model, args.input_shape)
    name = args.name or os.path.splitext(os.path.basename(os.path.normpath(args.input)))[0]
    net = Net(layers, name=name, source=args.input)
    net.shapes()
    net.save(args.out_model, args.out_weights)
    shapes = net.shapes()
    print(f"converted {len(model.layers)} Keras layers into {len(net.layers)} Caffe layers; "
          f"outputs: {', '.join(f'{o} {list(shapes[o])}' for o in outputs)}")
    print(f"wrote {args.out_model} and {args.out_weights}")
    return 0


def main(argv=None, prog=PROG):
    return run(convert_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
