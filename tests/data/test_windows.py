"""Window sampling (docs/zoo_dataset_format.md, docs/method.md#windows-and-halos): exact slices, per-sample starts, reproducibility, every W vs S."""

import datasets
import pytest
import torch

from sane_hf import TokenLayout
from sane_hf.data import (
    ArrowTokenStore,
    WindowCollator,
    WindowDataLoader,
    ZooCheckpointDataset,
    load_zoo_dataset,
    sample_windows,
)


def _layout_and_tokens(batch_size=6, token_size=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    layout = TokenLayout.from_module(model, token_size=token_size)
    tokens = torch.randn(batch_size, layout.num_tokens, token_size)
    return layout, tokens


@pytest.mark.parametrize("gather", [False, True], ids=["slices", "gather"])
@pytest.mark.parametrize("window", [1, 2, 19, 20, 21, 50])
def test_windows_are_exact_slices_for_every_length(window, gather, monkeypatch):
    # CPU uses per-sample slice copies; accelerators one advanced-indexing gather. Both must agree.
    monkeypatch.setattr("sane_hf.data.windows._CPU_SLICE_COPIES", not gather)
    layout, tokens = _layout_and_tokens()
    S = layout.num_tokens
    assert S == 20  # 7 rows x 2 tokens + 3 rows x 2 tokens
    out = sample_windows(
        tokens, window, torch.Generator().manual_seed(0), positions=layout.positions, mask=layout.mask
    )
    W = min(window, S)
    assert out["tokens"].shape == (6, W, 4) and out["positions"].shape == (6, W, 3) and out["mask"].shape == (6, W, 4)
    assert out["start"].dtype == torch.long and out["start"].shape == (6,)
    for b, start in enumerate(out["start"].tolist()):
        assert 0 <= start <= S - W
        assert torch.equal(out["tokens"][b], tokens[b, start : start + W])
        assert torch.equal(out["positions"][b], layout.positions[start : start + W])
        assert torch.equal(out["mask"][b], layout.mask[start : start + W])
        assert out["positions"][b, 0, 0] == start  # global positions
    if window >= S:
        assert out["start"].tolist() == [0] * 6 and torch.equal(out["tokens"], tokens)


def test_windows_are_reproducible_and_drawn_per_sample():
    layout, tokens = _layout_and_tokens(batch_size=64)
    kwargs = {"positions": layout.positions, "mask": layout.mask}
    a = sample_windows(tokens, 3, torch.Generator().manual_seed(7), **kwargs)
    b = sample_windows(tokens, 3, torch.Generator().manual_seed(7), **kwargs)
    c = sample_windows(tokens, 3, torch.Generator().manual_seed(8), **kwargs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["start"], c["start"])
    assert len(set(a["start"].tolist())) > 8  # one start per sample (18 possible), not one per batch
    # Batched positions/mask and explicit starts.
    starts = torch.tensor([0, 7] * 32)
    batched = {"positions": layout.positions.expand(64, -1, -1), "mask": layout.mask.expand(64, -1, -1)}
    d = sample_windows(tokens, 3, starts=starts, **batched)
    assert torch.equal(d["tokens"][1], tokens[1, 7:10]) and torch.equal(d["start"], starts)
    assert torch.equal(d["positions"][1], layout.positions[7:10]) and torch.equal(d["mask"][1], layout.mask[7:10])
    with pytest.raises(ValueError, match="starts"):
        sample_windows(tokens, 3, starts=torch.full((64,), 18), **kwargs)
    with pytest.raises(ValueError, match="window_size"):
        sample_windows(tokens, 0, **kwargs)


@pytest.fixture(scope="module")
def zoo(converted):
    return load_zoo_dataset(converted)


def test_window_loader_batches_are_slices_of_the_split(zoo):
    split = zoo.splits["train"]
    full = split["tokens"][:]  # [N, S, T] through datasets' torch formatting
    loader = WindowDataLoader(split, zoo.layout, window_size=32, batch_size=8, seed=0)
    assert len(loader) == 20 // 8
    batches = list(loader)
    assert len(batches) == 2
    seen = []
    for batch in batches:
        assert batch["tokens"].shape == (8, 32, 16) and batch["tokens"].dtype == torch.float32
        assert batch["positions"].shape == (8, 32, 3) and batch["mask"].dtype == torch.bool
        assert "full_tokens" not in batch
        for b, (row, start) in enumerate(zip(batch["index"].tolist(), batch["start"].tolist())):
            assert torch.equal(batch["tokens"][b], full[row, start : start + 32])
            assert torch.equal(batch["positions"][b], zoo.layout.positions[start : start + 32])
            assert batch["model_id"][b] == split[row]["model_id"]
            assert batch["epoch"][b] == split[row]["epoch"]
            # Properties keep their stored dtype (float64; datasets' torch format would give float32).
            assert batch["properties"]["test_acc"][b].item() == split.with_format(None)[row]["test_acc"]
            assert batch["properties"]["optimizer"][b] == split[row]["optimizer"]
        seen += batch["index"].tolist()
    assert len(set(seen)) == 16  # shuffled without replacement
    assert len(WindowDataLoader(split, zoo.layout, 32, 8, drop_last=False)) == 3
    assert len(list(WindowDataLoader(split, zoo.layout, 32, 8, drop_last=False, shuffle=False))[-1]["index"]) == 4


def test_window_loader_is_reproducible_and_full_tokens_do_not_change_windows(zoo):
    split = zoo.splits["train"]

    def run(**kwargs):
        return list(WindowDataLoader(split, zoo.layout, window_size=50, batch_size=4, **kwargs))

    a, b = run(seed=3), run(seed=3)
    c = run(generator=torch.Generator().manual_seed(3), full_tokens=True)
    for x, y, z in zip(a, b, c):
        for key in ("tokens", "positions", "mask", "start", "index"):
            assert torch.equal(x[key], y[key]) and torch.equal(x[key], z[key])
        assert torch.equal(z["full_tokens"], split["tokens"][z["index"].tolist()])
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(a, run(seed=4)))
    # A window longer than the sequence is the whole sequence.
    whole = next(iter(WindowDataLoader(split, zoo.layout, window_size=10_000, batch_size=2)))
    assert whole["tokens"].shape[1] == zoo.layout.num_tokens and whole["start"].tolist() == [0, 0]


def test_store_handles_many_record_batches_and_shuffled_datasets(zoo):
    split = zoo.splits["train"]
    pieces = datasets.concatenate_datasets([split.select(range(i, i + 5)) for i in range(0, 20, 5)])
    store = ArrowTokenStore(pieces)
    assert len(store.chunks) == 4  # one zero-copy view per Arrow record batch (here: per slice)
    full = split["tokens"][:]
    rows = torch.tensor([19, 0, 7, 7, 12])
    starts = torch.tensor([0, 100, 5, 150, 42])
    windows = store.windows(rows, starts, 32)
    for b in range(5):
        assert torch.equal(windows[b], full[rows[b], starts[b] : starts[b] + 32])
    assert torch.equal(store.rows(rows), full[rows])
    shuffled = split.shuffle(seed=0)
    store = ArrowTokenStore(shuffled)
    assert torch.equal(store.rows(torch.arange(3)), shuffled["tokens"][:3])
    with pytest.raises(IndexError):
        store.rows([20])


def test_torch_dataloader_path_matches(zoo):
    split = zoo.splits["validation"]
    dataset = ZooCheckpointDataset(split, property_columns=["test_acc"])
    assert len(dataset) == 4 and torch.equal(dataset[-1]["tokens"], split[3]["tokens"])
    collate = WindowCollator(zoo.layout, 20, torch.Generator().manual_seed(0), full_tokens=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (3, 20, 16) and batch["full_tokens"].shape == (3, zoo.layout.num_tokens, 16)
    for b, start in enumerate(batch["start"].tolist()):
        assert torch.equal(batch["tokens"][b], split[b]["tokens"][start : start + 20])
    assert list(batch["properties"]) == ["test_acc"] and batch["properties"]["test_acc"].shape == (3,)
    assert batch["model_id"] == [split[i]["model_id"] for i in range(3)]
    loader = zoo.window_loader("validation", window_size=20, batch_size=2, seed=0)
    assert len(loader) == 2


def test_a_split_without_a_full_batch_fails_clearly_not_with_stop_iteration(zoo):
    split = zoo.splits["train"]  # 20 checkpoints
    loader = zoo.window_loader("train", window_size=32, batch_size=32)
    with pytest.raises(ValueError, match=r"20 checkpoint\(s\), fewer than batch_size=32.*drop_last=False"):
        next(iter(loader))
    assert len(next(iter(WindowDataLoader(split, zoo.layout, 32, 32, drop_last=False)))["index"]) == 20
    with pytest.raises(ValueError, match="The split is empty"):
        next(iter(WindowDataLoader(split.select([]), zoo.layout, 32, 32, drop_last=False)))
