"""Batch streams: a step's batch is a pure function of (seed, step), shards concatenate to the
one-worker batch, and an epoch visits every index once."""

from __future__ import annotations

import pytest
import torch

from cdlm_dist.data import BatchStream, MultiDomainStream, Split, iterate_split

N, BATCH = 48, 8  # 6 batches an epoch


def _split(n: int = N, offset: int = 0) -> Split:
    """Images whose pixels hold their own index, so a batch can be traced back."""
    ids = torch.arange(n) + offset
    return Split(ids.to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(), ids % 10)


def test_batch_is_a_pure_function_of_seed_and_step():
    steps = [5, 0, 17, 3, 6, 5]
    first = BatchStream(_split(), BATCH, seed=11)
    drawn = {s: first.batch(s) for s in steps}
    fresh = BatchStream(_split(), BATCH, seed=11)
    for s in reversed(steps):  # another order, another instance: same batches
        x, y = fresh.batch(s)
        assert torch.equal(x, drawn[s][0]) and torch.equal(y, drawn[s][1])
    assert not torch.equal(BatchStream(_split(), BATCH, seed=12).indices(0), first.indices(0))


def test_batches_are_float_in_unit_range_with_matching_labels():
    split = _split()
    x, y = BatchStream(split, BATCH, seed=0).batch(2)
    assert x.dtype == torch.get_default_dtype() and x.shape == (BATCH, 1, 2, 2)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    ids = (x[:, 0, 0, 0] * 255).round().long()
    assert torch.equal(y, split.labels[ids])


@pytest.mark.parametrize("step", [0, 4, 5, 6, 13])  # within, at and past an epoch boundary
def test_two_ranks_with_half_batches_concatenate_to_the_one_rank_batch(step):
    one = BatchStream(_split(), BATCH, seed=3).batch(step)
    halves = [BatchStream(_split(), BATCH, seed=3, rank=r, world_size=2).batch(step)
              for r in range(2)]
    assert all(len(h[1]) == BATCH // 2 for h in halves)
    assert torch.equal(torch.cat([h[0] for h in halves]), one[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), one[1])


def test_each_epoch_covers_every_index_once_in_a_new_order():
    stream = BatchStream(_split(), BATCH, seed=5)
    per_epoch = N // BATCH
    epochs = [torch.cat([stream.indices(e * per_epoch + k) for k in range(per_epoch)])
              for e in range(2)]
    for order in epochs:
        assert torch.equal(order.sort().values, torch.arange(N))
    assert not torch.equal(epochs[0], epochs[1])


def test_split_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(_split(4), BATCH, seed=0)


def test_multi_domain_streams_are_independent_and_shard_like_one():
    splits = [_split(), _split(offset=100)]
    both = MultiDomainStream(splits, BATCH, seed=1).batch(3)
    assert len(both) == 2
    assert not torch.equal(both[0][1], both[1][1] - 100 % 10)  # domains use different orders
    assert float(both[1][0].min()) >= 100 / 255  # domain 1's images, not domain 0's
    shards = [MultiDomainStream(splits, BATCH, seed=1, rank=r, world_size=2).batch(3)
              for r in range(2)]
    for k in range(2):
        assert torch.equal(torch.cat([s[k][0] for s in shards]), both[k][0])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_ranks_cover_every_image_once(world_size):
    split = _split(50)
    seen = torch.cat([y for r in range(world_size)
                      for _, y in iterate_split(split, 8, rank=r, world_size=world_size)])
    ids = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for r in range(world_size)
                     for x, _ in iterate_split(split, 8, rank=r, world_size=world_size)])
    assert torch.equal(ids.sort().values, torch.arange(50))
    assert len(seen) == 50
