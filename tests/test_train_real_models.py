"""The torch model of real pretrained nets (res10 SSD, open_nsfw, the MTCNN P/R/O-Nets) on
their sample images: in the TEST phase every blob equals the numpy runtime's within 1e-5 of the
blob's largest magnitude."""
import numpy as np
import pytest
import torch

from ristretto_py import Net
from ristretto_py.runtime import NumpyRuntime
from ristretto_py.train.model import TorchNet
from test_real_models import _image_batch

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("name, batch", [("res10_ssd", 1), ("open_nsfw", 2), ("mtcnn_pnet", 2),
                                         ("mtcnn_rnet", 2), ("mtcnn_onet", 2)])
def test_every_blob_equals_the_numpy_runtime(real_models, name, batch):
    files = real_models(name)
    x = _image_batch(real_models, name, batch)
    net = Net.load(files.prototxt, files.caffemodel)
    data = net.input_blobs[0]
    net = net.with_input_shapes({data: x.shape})
    reference = NumpyRuntime(net).forward({data: x})
    model = TorchNet(net)
    with torch.no_grad():
        ours = model({data: x})
    assert set(reference) == set(ours)
    for blob, value in reference.items():
        mine = ours[blob].numpy()
        assert mine.shape == value.shape, f"{name} {blob}: {mine.shape} vs {value.shape}"
        scale = max(float(np.abs(value).max()), 1e-30)
        error = float(np.abs(mine.astype(np.float64) - value).max()) / scale
        assert error <= 1e-5, f"{name} {blob}: {error:.3g} of the largest magnitude"
    if name == "res10_ssd":                      # detections found, not an empty comparison
        assert np.count_nonzero(reference["detection_out"][0, 0, :, 2] > 0.5) >= 1
