"""The device loader and batched augmentation: every image once per epoch, shapes, labels and ranges kept."""

from __future__ import annotations

import pytest
import torch

from gpuvision.data.augment import Augment, cutout, flip_translate
from gpuvision.data.input_spec import InputSpec
from gpuvision.data.loader import DeviceLoader

IDENTITY = InputSpec(size=(8, 8), channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)  # pixels pass unchanged


def _ids(n=103, size=8):
    # Each image is filled with its own index, so a batch tells which images it holds.
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return images, torch.arange(n) % 7


def test_every_image_exactly_once_per_epoch_with_labels_kept():
    images, labels = _ids()
    loader = DeviceLoader(images, labels, 16, IDENTITY, augment=Augment(cutout=0),
                          generator=torch.Generator().manual_seed(0))
    orders = []
    for epoch in range(3):
        seen = []
        for x, y in loader.epoch(epoch):
            assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32
            ids = x[:, 0, 0, 0].round().long()
            assert torch.equal(y, labels[ids])  # labels travel with their images
            seen.append(ids)
        seen = torch.cat(seen)
        assert torch.equal(seen.sort().values, torch.arange(103))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])  # reshuffled each epoch
    assert len(loader) == 7


def test_same_generator_state_gives_the_same_batches():
    images, labels = _ids()
    batches = []
    for _ in range(2):
        loader = DeviceLoader(images, labels, 10, IDENTITY, Augment(), torch.Generator().manual_seed(5))
        batches.append(torch.cat([x for x, _ in loader.epoch(0)]))
    assert torch.equal(batches[0], batches[1])


def test_flip_translate_moves_pixels_within_range():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    same = flip_translate(x, torch.tensor([False, False]), torch.zeros(2, 2, dtype=torch.long))
    assert torch.equal(same, x)
    flipped = flip_translate(x, torch.tensor([True, False]), torch.zeros(2, 2, dtype=torch.long))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    shifted = flip_translate(x, torch.tensor([False, False]), torch.tensor([[1, 0], [0, -2]]))
    assert torch.equal(shifted[0, :, :5], x[0, :, 1:])  # moved up one row
    assert torch.equal(shifted[0, :, 5], x[0, :, 4])  # reflected at the border
    assert torch.equal(shifted[1, :, :, 2:], x[1, :, :, :4])
    assert shifted.min() >= x.min() and shifted.max() <= x.max()


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(4, 3, 10, 10)
    out = cutout(x, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.all((out == 0).sum(dim=(1, 2, 3)) == 3 * 3 * 3)


def test_normalisation_uses_mean_and_std():
    images = torch.full((4, 3, 2, 2), 200, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.zeros(4, dtype=torch.long), 4, InputSpec((2, 2), 3, (100.0,) * 3, (50.0,) * 3))
    x, _ = next(loader.epoch())
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_streaming_loader_yields_every_image_once_and_replays_from_its_state():
    from gpuvision.data.loader import StreamingLoader

    images, labels = _ids(n=250)
    loader = StreamingLoader(images, labels, 32, IDENTITY, torch.device("cpu"), Augment(),
                             torch.Generator().manual_seed(1), prefetch=2)
    state = {k: v.clone() for k, v in loader.state().items()}
    first = []
    for x, y in loader.epoch(0):
        ids = x[:, 0, 0, 0].round().long()
        assert torch.equal(y, labels[ids]) and x.shape[1:] == (3, 8, 8)
        first.append(ids)
    first = torch.cat(first)
    assert torch.equal(first.sort().values, torch.arange(250))
    loader.set_state(state)
    assert torch.equal(torch.cat([x[:, 0, 0, 0].round().long() for x, _ in loader.epoch(0)]), first)


def test_streaming_loader_stops_cleanly_when_abandoned():
    from gpuvision.data.loader import StreamingLoader

    images, labels = _ids(n=200)
    loader = StreamingLoader(images, labels, 8, IDENTITY, torch.device("cpu"), Augment(),
                             torch.Generator().manual_seed(1), prefetch=1)
    for i, _ in enumerate(loader.epoch(0)):
        if i == 2:
            break  # the generator's finally drains and joins the producer thread
    assert len(list(loader.epoch(1))) == 25


@pytest.mark.parametrize("streaming", [False, True])
def test_drop_last_yields_only_full_batches_each_image_at_most_once(streaming):
    from gpuvision.data.loader import StreamingLoader

    images, labels = _ids(n=103)
    common = dict(augment=Augment(), generator=torch.Generator().manual_seed(2), drop_last=True)
    loader = (StreamingLoader(images, labels, 16, IDENTITY, torch.device("cpu"), **common) if streaming
              else DeviceLoader(images, labels, 16, IDENTITY, **common))
    assert len(loader) == 6
    batches = [x[:, 0, 0, 0].round().long() for x, _ in loader.epoch(0)]
    assert [len(b) for b in batches] == [16] * 6
    assert len(torch.cat(batches).unique()) == 96


@pytest.mark.cuda
def test_streaming_batches_on_cuda_equal_the_host_gather():
    from gpuvision.data.loader import StreamingLoader

    images, labels = _ids(n=250)
    loader = StreamingLoader(images, labels, 32, IDENTITY, torch.device("cuda"), Augment(translate=0,
                             flip=False), torch.Generator(device="cuda").manual_seed(3), prefetch=3, drop_last=True)
    for x, y in loader.epoch(0):  # every batch's pixels and labels still match once the side stream has moved on
        ids = x[:, 0, 0, 0].round().long()
        assert x.is_cuda and len(ids) == 32 and torch.equal(y, labels.cuda()[ids])
        assert torch.all(x == ids.view(-1, 1, 1, 1).float())


def test_progressive_resizing_scales_the_first_epochs_down():
    images, labels = _ids(n=40, size=16)
    loader = DeviceLoader(images, labels, 8, InputSpec((16, 16), 3, (0.0,) * 3, (1.0,) * 3), Augment(sides=(8, 12)),
                          torch.Generator().manual_seed(0))
    sides = [next(loader.epoch(e))[0].shape[-1] for e in range(3)]
    assert sides == [8, 12, 16]
    x, y = next(loader.epoch(0))
    assert torch.equal(x[:, 0, 0, 0].round().long() % 7, y)  # a uniform image stays itself when scaled


def _patterned(n=103, size=8):
    """Channel 0 holds the image's index everywhere; channels 1 and 2 its row and column: shifts and flips show."""
    ids = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size)
    rows = torch.arange(size, dtype=torch.uint8).view(1, 1, size, 1).expand(n, 1, size, size)
    return torch.cat([ids, 10 * rows, 20 * rows.transpose(2, 3)], 1).contiguous(), torch.arange(n) % 7


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("streaming", [False, True])
def test_shards_split_each_global_batch_and_keep_its_augmentation(world, streaming):
    """N processes see exactly one process's global batches, each image augmented alike, each touching its block."""
    from gpuvision.data.loader import Shard, StreamingLoader

    images, labels = _patterned()
    aug = Augment(translate=2, cutout=3)

    def loader(shard):
        block = slice(shard.start, shard.stop)
        common = dict(augment=aug, generator=torch.Generator().manual_seed(4), drop_last=False, shard=shard)
        if streaming:
            return StreamingLoader(images, labels[block], 16, IDENTITY, torch.device("cpu"),
                                   rows=torch.arange(shard.start, shard.stop), **common)
        return DeviceLoader(images[block], labels[block], 16, IDENTITY, **common)

    whole = loader(Shard.of(103))
    parts = [loader(Shard.of(103, r, world)) for r in range(world)]
    assert all(len(p) == len(whole) == 7 for p in parts)
    for epoch in range(2):
        for step, (one, *shards) in enumerate(zip(*[p.epoch(epoch) for p in [whole, *parts]])):
            ids = [b[0][:, 0].amax((1, 2)).round().long() for b in shards]  # a cutout never covers all pixels
            for r, i in enumerate(ids):  # each process only its block
                block = Shard.of(103, r, world)
                assert bool(((i >= block.start) & (i < block.stop)).all())
            merged = torch.cat([b[0] for b in shards])
            order = torch.cat(ids).argsort()
            reference = one[0][one[0][:, 0].amax((1, 2)).round().long().argsort()]
            assert torch.equal(merged[order], reference)  # same images, same flips, shifts and cutouts
            assert sum(len(i) for i in ids) == whole.global_size(step)


def test_skipping_batches_replays_the_rest_of_the_epoch():
    images, labels = _ids()
    a = DeviceLoader(images, labels, 16, IDENTITY, Augment(cutout=2), torch.Generator().manual_seed(9))
    b = DeviceLoader(images, labels, 16, IDENTITY, Augment(cutout=2), torch.Generator().manual_seed(9))
    full = [x for x, _ in a.epoch(1)]
    rest = [x for x, _ in b.epoch(1, skip=3)]
    assert len(rest) == len(full) - 3 and all(torch.equal(p, q) for p, q in zip(full[3:], rest))


def test_brightness_contrast_jitter_shifts_then_scales_each_image_within_its_range():
    from gpuvision.data.augment import jitter

    x = torch.cat([torch.zeros(500, 3, 2, 4), torch.ones(500, 3, 2, 4)], 2)  # each image: top half 0, bottom 1
    j = jitter(x, 0.5, 0.25, torch.rand(500, 2, generator=torch.Generator().manual_seed(0)))
    scale = j[:, 0, 3, 0] - j[:, 0, 0, 0]  # (1 + b) c - b c
    shift = j[:, 0, 0, 0] / scale  # b c / c
    assert scale.min() >= 0.75 and scale.max() <= 1.25 and shift.abs().max() <= 0.5
    assert scale.std() > 0.1 and shift.std() > 0.2  # drawn per image
    assert torch.equal(j[:, :, :2].amax((1, 2, 3)), j[:, :, :2].amin((1, 2, 3)))  # one shift and scale per image
    spec = InputSpec((4, 4), 3, (0.0,) * 3, (1.0,) * 3)
    loader = DeviceLoader(x.to(torch.uint8), torch.zeros(500, dtype=torch.long), 500, spec,
                          Augment(translate=0, flip=False, brightness=0.5), torch.Generator().manual_seed(0))
    batch, _ = next(loader.epoch(0))
    assert batch[:, 0, 0, 0].abs().max() <= 0.5 and batch[:, 0, 0, 0].std() > 0.2  # the loader applies it
