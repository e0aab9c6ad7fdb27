import torch

from harness.data import DeviceData, augment_batch, synthetic_arrays

CPU = torch.device("cpu")


def make(n=50, normalize="cifar"):
    tx, ty, vx, vy = synthetic_arrays(n, 23, seed=3)
    return DeviceData(tx, ty, vx, vy, device=CPU, normalize=normalize), tx, ty, vx, vy


def test_half_normalization_maps_0_to_minus1_and_255_to_1():
    d, *_ = make(normalize="half")
    x = d.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), -1.0)) and torch.allclose(x[0, :, 0, 1], torch.ones(3))


def test_cifar_normalization_is_per_channel_mean_std():
    d, *_ = make()
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(d.normalize(x)[0, :, 0, 0], (128 / 255 - mean) / std, atol=1e-5)


def test_epoch_visits_every_image_once_and_test_set_in_order():
    d, tx, ty, vx, vy = make(n=50)
    seen = torch.cat([y for _, y in d.train_epoch(8, generator=torch.Generator().manual_seed(0), drop_last=False)])
    assert len(seen) == 50 and sorted(seen.tolist()) == sorted(ty.tolist())
    xs, ys = zip(*d.test_batches(10))
    assert [len(y) for y in ys] == [10, 10, 3]
    assert torch.equal(torch.cat(ys), vy) and torch.allclose(torch.cat(xs), d.normalize(vx))


def test_flip_is_a_mirror_and_seeded():
    x = torch.randn(64, 3, 32, 32)
    a = augment_batch(x, "flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, "flip", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(a[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_crop_is_a_window_of_the_reflect_padded_image():
    x = torch.randn(16, 3, 32, 32)
    out = augment_batch(x, "flip-crop", torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(torch.cat([x, x.flip(3)]), (4, 4, 4, 4), mode="reflect")
    for i in range(16):
        windows = [padded[j, :, dy:dy + 32, dx:dx + 32] for j in (i, i + 16) for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)
