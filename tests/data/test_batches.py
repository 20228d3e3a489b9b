"""WindowBatches and fixed_eval_batches: coverage, order, resume, DDP equivalence, small splits."""
import numpy as np
import pytest
import torch

from tinystories.data.batches import WindowBatches, fixed_eval_batches, window_count
from tinystories.errors import UserError

BLOCK = 8


def counting_tokens(n):
    """Token i is i, so a batch tells which windows it holds."""
    return np.arange(n, dtype=np.uint16)


def window_starts(x):
    return sorted((x[:, 0] // BLOCK).tolist())


def test_windows_cover_every_target_once_per_epoch():
    tokens = counting_tokens(BLOCK * 12 + 1)  # 12 windows, 3 batches of 4
    batches = WindowBatches(tokens, BLOCK, batch_size=4, seed=0)
    assert (batches.n_windows, batches.batches_per_epoch) == (12, 3)
    targets = []
    for _ in range(3):
        x, y = batches.next_batch()
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, BLOCK)
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)
        targets += y.flatten().tolist()
    assert sorted(targets) == list(range(1, len(tokens)))
    assert (batches.epoch, batches.position) == (1, 0)


def test_each_epoch_has_its_own_seeded_order():
    tokens = counting_tokens(BLOCK * 40 + 1)
    first = WindowBatches(tokens, BLOCK, batch_size=5, seed=3)
    again = WindowBatches(tokens, BLOCK, batch_size=5, seed=3)
    other_seed = WindowBatches(tokens, BLOCK, batch_size=5, seed=4)
    epochs = [[window_starts(first.next_batch()[0]) for _ in range(8)] for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], [])) == list(range(40))
    assert [window_starts(again.next_batch()[0]) for _ in range(8)] == epochs[0]
    assert [window_starts(other_seed.next_batch()[0]) for _ in range(8)] != epochs[0]


def test_tail_windows_are_dropped_and_state_rolls_over():
    batches = WindowBatches(counting_tokens(BLOCK * 11 + 5), BLOCK, batch_size=3, seed=0)
    assert (batches.n_windows, batches.batches_per_epoch) == (11, 3)
    seen = [batches.next_batch() for _ in range(3)]
    assert len({s for x, _ in seen for s in window_starts(x)}) == 9
    assert batches.state_dict() == {"epoch": 1, "position": 0}


def test_resume_continues_exactly():
    tokens = counting_tokens(BLOCK * 30 + 1)
    reference = WindowBatches(tokens, BLOCK, batch_size=4, seed=1)
    expected = [reference.next_batch() for _ in range(20)]
    interrupted = WindowBatches(tokens, BLOCK, batch_size=4, seed=1)
    for _ in range(9):
        interrupted.next_batch()
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "position": 2}
    resumed = WindowBatches(tokens, BLOCK, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    for x, y in expected[9:]:
        got_x, got_y = resumed.next_batch()
        assert torch.equal(got_x, x) and torch.equal(got_y, y)
    with pytest.raises(UserError, match="does not fit"):
        resumed.load_state_dict({"epoch": 0, "position": 7})
    with pytest.raises(UserError, match="does not fit"):
        resumed.load_state_dict({"epoch": -1, "position": 0})
    # A run stopped within its first epoch resumes too.
    early = WindowBatches(tokens, BLOCK, batch_size=4, seed=1)
    early.load_state_dict({"epoch": 0, "position": 3})
    assert torch.equal(early.next_batch()[0], expected[3][0])


@pytest.mark.parametrize("world_size, batch_size", [(2, 3), (3, 2), (4, 1)])
def test_ranks_together_equal_one_rank_with_the_whole_batch(world_size, batch_size):
    tokens = counting_tokens(BLOCK * 50 + 3)
    single = WindowBatches(tokens, BLOCK, batch_size * world_size, seed=5)
    ranks = [WindowBatches(tokens, BLOCK, batch_size, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(r.batches_per_epoch == single.batches_per_epoch for r in ranks)
    for _ in range(2 * single.batches_per_epoch + 1):  # across epoch boundaries
        together = sum((window_starts(r.next_batch()[0]) for r in ranks), [])
        assert sorted(together) == window_starts(single.next_batch()[0])
    assert all(r.state_dict() == single.state_dict() for r in ranks)


def test_too_small_splits_are_user_errors():
    with pytest.raises(UserError, match=f"has {BLOCK} tokens, too few for one window of {BLOCK + 1}; "
                                        "use more data or a smaller --block_size"):
        WindowBatches(counting_tokens(BLOCK), BLOCK, batch_size=1, seed=0)
    assert window_count(counting_tokens(BLOCK + 1), BLOCK) == 1  # one window is enough
    with pytest.raises(UserError, match="fewer than one batch of 4;"):
        WindowBatches(counting_tokens(BLOCK * 3 + 1), BLOCK, batch_size=2, seed=0, world_size=2)
    # Exactly one batch per epoch is enough.
    batches = WindowBatches(counting_tokens(BLOCK * 4 + 1), BLOCK, batch_size=2, seed=0, world_size=2)
    assert batches.batches_per_epoch == 1


def test_fixed_eval_batches_are_the_same_every_call():
    tokens = counting_tokens(BLOCK * 25 + 1)
    first = fixed_eval_batches(tokens, BLOCK, batch_size=4, n_batches=3, seed=9)
    again = fixed_eval_batches(tokens, BLOCK, batch_size=4, n_batches=3, seed=9)
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    windows = [s for x, _ in first for s in window_starts(x)]
    assert len(set(windows)) == 12
    assert len(fixed_eval_batches(tokens, BLOCK, batch_size=4, n_batches=100, seed=9)) == 6  # no repeats
    small = fixed_eval_batches(counting_tokens(BLOCK * 3 + 1), BLOCK, batch_size=8, n_batches=5, seed=0)
    assert len(small) == 1 and small[0][0].shape == (3, BLOCK)


def test_reads_a_memmap(tmp_path):
    path = tmp_path / "train.bin"
    counting_tokens(BLOCK * 6 + 1).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = WindowBatches(tokens, BLOCK, batch_size=2, seed=0).next_batch()
    assert torch.equal(y, x + 1)
