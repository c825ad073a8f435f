import numpy as np
import pytest
import torch

from datasources import DATASETS, DataError, load_dataset
from datasources.builders import grid_centres, ring_centres


@pytest.mark.parametrize(
    ("name", "train", "test", "shape"),
    [
        ("mnist5k", 4000, 1000, (1, 28, 28)),
        ("digits", 1437, 360, (1, 8, 8)),
        ("stacked_mnist", 10_000, 2_000, (3, 28, 28)),
        ("ring", 100_000, 2_500, (2,)),
        ("grid", 100_000, 2_500, (2,)),
    ],
)
def test_embedded_datasets_have_fixed_splits_and_labels(name, train, test, shape):
    a, b = load_dataset(name), load_dataset(name)
    assert a.train_x.shape == (train, *shape) and a.test_x.shape == (test, *shape)
    assert len(a.train_y) == train and len(a.test_y) == test
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)  # fixed
    assert a.train_x.dtype == torch.float32
    if a.is_image:
        assert a.train_x.min() >= 0 and a.train_x.max() <= 1 and a.train_x.max() > 0.9
    assert int(a.train_y.max()) < a.n_classes


def test_image_splits_are_disjoint_and_stratified():
    d = load_dataset("mnist5k")
    flat_train = {bytes(row) for row in (d.train_x.flatten(1) * 255).byte().numpy()}
    overlap = sum(bytes(row) in flat_train for row in (d.test_x.flatten(1) * 255).byte().numpy())
    assert overlap <= 2  # MNIST itself has a few duplicate digits, nothing more
    assert torch.bincount(d.test_y).tolist() == [100] * 10


def test_mixtures_follow_the_pacgan_protocol():
    ring, grid = load_dataset("ring"), load_dataset("grid")
    assert ring.n_classes == 8 and grid.n_classes == 25
    assert np.allclose(np.linalg.norm(ring_centres(), axis=1), 1)
    assert sorted(set(grid_centres()[:, 0])) == [-4, -2, 0, 2, 4]
    assert np.array_equal(DATASETS["grid"].centres, grid_centres())  # quirks on the spec
    assert np.allclose(ring.modes.numpy(), DATASETS["ring"].centres)
    for d in (ring, grid):
        offsets = d.train_x - d.modes[d.train_y]
        assert offsets.std().item() == pytest.approx(d.mode_std, rel=0.02)
        counts = torch.bincount(d.train_y, minlength=d.n_classes).float()
        assert (counts / counts.mean() - 1).abs().max() < 0.05  # equal weights


def test_stacked_mnist_labels_are_the_three_digits():
    stacked, base = load_dataset("stacked_mnist"), load_dataset("mnist5k")
    lookup = {
        bytes((x * 255).byte().numpy()): int(y)
        for x, y in zip(base.train_x, base.train_y, strict=True)
    }
    for x, y in zip(stacked.train_x[:20], stacked.train_y[:20], strict=True):
        digits = [lookup[bytes((x[c : c + 1] * 255).byte().numpy())] for c in range(3)]
        assert digits[0] * 100 + digits[1] * 10 + digits[2] == int(y)


def test_subset_and_device_move():
    d = load_dataset("digits").subset(100).to("cpu")
    assert len(d.train_x) == 100 and len(d.test_x) == 360


def test_unknown_dataset_and_offline_torchvision_fail_with_one_line(tmp_path):
    with pytest.raises(DataError, match="choose from: mnist5k"):
        load_dataset("imagenet")
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "mnist5k" in msg
    assert not DATASETS["fashion_mnist"].embedded
