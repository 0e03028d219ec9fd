"""Streaming zoos: `load_zoo_dataset(..., streaming=True)` and `StreamingWindowLoader` (shuffle buffer, resumable
position), on a local folder. By Hub id (pretraining on the stream from the local Hub mirror):
tests/hub/test_hub_integration.py."""

import pytest
import torch

from sane_hf.data import StreamingWindowLoader, load_zoo_dataset


@pytest.fixture(autouse=True)
def _no_sleep_after_a_shuffled_pass(monkeypatch):
    """datasets sleeps 5 s after every pass over a shuffled stream of parquet shards (waiting for its reader threads);
    nothing here needs the wait."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def zoos(converted):
    return load_zoo_dataset(converted), load_zoo_dataset(converted, streaming=True)


def _rows_by_id(zoo, split="train") -> dict[tuple[str, int], torch.Tensor]:
    rows = zoo.splits[split][:]
    return {(m, int(e)): t for m, e, t in zip(rows["model_id"], rows["epoch"], rows["tokens"])}


def test_a_streamed_zoo_holds_the_same_rows(zoos):
    zoo, streamed = zoos
    assert type(streamed.splits["train"]).__name__ == "IterableDataset"
    assert sorted(streamed.splits) == sorted(zoo.splits) and streamed.layout == zoo.layout
    reference = _rows_by_id(zoo)
    rows = list(streamed.splits["train"])
    assert len(rows) == len(reference)
    for row in rows:
        assert torch.equal(row["tokens"], reference[(row["model_id"], int(row["epoch"]))])


def test_streaming_window_batches_cut_the_stored_tokens(zoos):
    zoo, streamed = zoos
    layout, reference = zoo.layout, _rows_by_id(zoo)
    loader = StreamingWindowLoader(streamed.splits["train"], layout, window_size=5, batch_size=4, shuffle_buffer=8)
    batches = list(loader)
    assert len(batches) == len(reference) // 4  # the incomplete last batch is dropped
    seen = []
    for batch in batches:
        assert batch["tokens"].shape == (4, 5, layout.token_size)
        for b, (model_id, epoch, start) in enumerate(zip(batch["model_id"], batch["epoch"], batch["start"])):
            full = reference[(model_id, int(epoch))]
            assert torch.equal(batch["tokens"][b], full[start : start + 5])
            assert torch.equal(batch["positions"][b], layout.positions[start : start + 5])
            seen.append((model_id, int(epoch)))
    assert len(set(seen)) == len(seen)  # every checkpoint at most once per pass
    in_stream_order = [(r["model_id"], int(r["epoch"])) for r in streamed.splits["train"]][: len(seen)]
    assert seen != in_stream_order  # the shuffle buffer reorders
    unshuffled = StreamingWindowLoader(streamed.splits["train"], layout, window_size=5, batch_size=4, shuffle_buffer=0)
    assert [(m, int(e)) for b in unshuffled for m, e in zip(b["model_id"], b["epoch"])] == in_stream_order


def test_a_resumed_loader_continues_with_the_next_batch(zoos):
    _, streamed = zoos
    kwargs = dict(window_size=5, batch_size=4, shuffle_buffer=0, seed=3)
    uninterrupted = list(StreamingWindowLoader(streamed.splits["train"], streamed.layout, **kwargs))
    first = StreamingWindowLoader(streamed.splits["train"], streamed.layout, **kwargs)
    iterator = iter(first)
    for _ in range(2):
        next(iterator)
    state = first.state_dict()
    resumed = StreamingWindowLoader(streamed.splits["train"], streamed.layout, **kwargs)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(uninterrupted) - 2
    for got, want in zip(rest, uninterrupted[2:]):
        assert got["model_id"] == want["model_id"]
        assert torch.equal(got["start"], want["start"]) and torch.equal(got["tokens"], want["tokens"])
        assert torch.equal(got["index"], want["index"])


def test_streaming_loader_errors(zoos):
    zoo, streamed = zoos
    with pytest.raises(ValueError, match="takes a streamed split"):
        StreamingWindowLoader(zoo.splits["train"], zoo.layout, window_size=5, batch_size=4)
    too_large = StreamingWindowLoader(streamed.splits["train"], zoo.layout, window_size=5, batch_size=10_000)
    with pytest.raises(ValueError, match="fewer than batch_size=10000"):
        next(iter(too_large))
    with pytest.raises(ValueError, match="`shuffle_buffer` must be an int >= 0"):
        StreamingWindowLoader(streamed.splits["train"], zoo.layout, window_size=5, batch_size=4, shuffle_buffer=-1)


def test_each_pass_reshuffles_and_a_pass_is_reproducible(zoos):
    """`set_epoch(e)` seeds pass e's shuffle from `(seed, e)`: pass 1 comes in another order than pass 0, and a new
    loader told it is in pass 1 gives pass 1's order again (a resumed run's later passes match the uninterrupted)."""
    _, streamed = zoos

    def order(loader, epoch):
        loader.set_epoch(epoch)
        return [(m, int(e)) for batch in loader for m, e in zip(batch["model_id"], batch["epoch"])]

    kwargs = dict(window_size=5, batch_size=4, shuffle_buffer=8, seed=1)
    loader = StreamingWindowLoader(streamed.splits["train"], streamed.layout, **kwargs)
    first, second = order(loader, 0), order(loader, 1)
    assert sorted(first) == sorted(second) and first != second
    assert order(StreamingWindowLoader(streamed.splits["train"], streamed.layout, **kwargs), 1) == second
