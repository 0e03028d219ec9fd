"""Pretraining over a streamed zoo (`--streaming`): the stream's rows in its order, epochs as passes, one part of the
stream per process, and an exact resume from the stream position a step checkpoint keeps (on a local folder; not by
Hub id: tests/data/test_streaming.py says why). Bad combinations of options: tests/test_bad_inputs.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sane_hf.data import ConvertConfig, convert_zoo, load_zoo_dataset
from sane_hf.training.checkpoints import read_trainer_state
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import get_streaming_dataloaders, pretrain


TINY = dict(d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8, batch_size=4, lr=3e-3, seed=5)


@pytest.fixture(scope="module")
def zoo_dataset(tmp_path_factory, zoo_tools):
    """10 MLPs x 3 checkpoints, tokenized: 21 train, 3 validation and 6 test checkpoints."""
    root = tmp_path_factory.mktemp("streamed_pretraining")
    mlp = {"in_features": 16, "hidden_sizes": [8], "num_classes": 4}
    zoo = zoo_tools.write_sane_hf_zoo(root / "zoo", num_models=10, num_epochs=2, architecture="mlp", model_kwargs=mlp)
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(root / "zoo_ds"), seed=0), show_progress=False)
    return root / "zoo_ds"


def _config(dataset, output, **overrides) -> PretrainConfig:
    values = {"dataset": str(dataset), "output_dir": str(output), **TINY, "logging_steps": 2, "num_threads": 1}
    return PretrainConfig(**{**values, **overrides})


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _stored_order_loader(tokens: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    """Full-checkpoint batches in the order the shards store the rows: what a stream without a shuffle buffer gives."""
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tokens),
        batch_size=batch_size,
        shuffle=False,
        drop_last=True,
        collate_fn=lambda items: {"full_tokens": torch.stack([item[0] for item in items])},
    )


def _losses(folder) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in read_trainer_state(folder)["log_history"]]


def test_streamed_pretraining_trains_on_the_stream_in_its_order(zoo_dataset, tmp_path):
    """Without a shuffle buffer, a streamed run trains on exactly the batches of the stored rows in stored order, one
    pass per epoch, and validates on the stored validation rows: the same weights and log as a run fed those batches
    by hand. And its loss falls."""
    zoo = load_zoo_dataset(zoo_dataset)
    train, val = zoo.splits["train"][:]["tokens"], zoo.splits["validation"][:]["tokens"]
    reference_loaders = (_stored_order_loader(train, 4), _stored_order_loader(val, min(4, len(val))))
    cfg = dict(epochs=12)
    reference = pretrain(_config(zoo_dataset, tmp_path / "reference", **cfg), dataloaders=reference_loaders)
    streamed = pretrain(_config(zoo_dataset, tmp_path / "streamed", streaming=True, shuffle_buffer=0, **cfg))

    state = read_trainer_state(streamed)
    assert state["optimizer_steps"] == 12 * (len(train) // 4)
    assert _losses(streamed) == _losses(reference)
    for key, value in _weights(reference).items():
        assert torch.equal(value, _weights(streamed)[key]), key
    train_losses = [line["train/loss"] for line in state["log_history"] if "train/loss" in line]
    val_losses = [line["val/loss"] for line in state["log_history"] if "val/loss" in line]
    assert len(val_losses) == 12
    assert train_losses[-1] < train_losses[0] and val_losses[-1] < val_losses[0]


def test_each_process_reads_its_own_part_of_the_stream(zoo_dataset):
    """Two processes: disjoint parts that together hold every train checkpoint, the same number of batches each."""
    zoo = load_zoo_dataset(zoo_dataset, streaming=True)
    reference = load_zoo_dataset(zoo_dataset).splits["train"][:]["tokens"]
    cfg = _config(zoo_dataset, "unused", streaming=True, shuffle_buffer=0, batch_size=2)
    parts = []
    for rank in range(2):
        train, val = get_streaming_dataloaders(cfg, zoo, rank, 2, torch.device("cpu"))
        assert len(train) == len(reference) // 2 // 2
        parts.append(torch.cat([batch["full_tokens"] for batch in train]))
    seen = torch.cat(parts)
    assert len(seen) == 2 * 5 * 2  # 21 rows: 11 and 10 per process, 5 full batches of 2 each
    # Every row seen is a stored row, and none is seen twice (by the same or the other process).
    matches = (seen[:, None] == reference[None]).flatten(2).all(-1)
    assert torch.equal(matches.sum(1), torch.ones(len(seen), dtype=torch.long))
    assert int(matches.sum(0).max()) == 1


def test_an_interrupted_streamed_run_resumes_where_its_stream_stood(zoo_dataset, tmp_path, killed_after_checkpoint):
    """Killed after the step-6 checkpoint (mid-epoch: 5 batches a pass), resumed from it: the same weights as an
    uninterrupted run, which needs the stream position saved with the checkpoint (a resumed stream that restarted
    its pass would train on other batches)."""
    cfg = dict(streaming=True, shuffle_buffer=0, max_steps=13, save_steps=3, epochs=5)
    reference = pretrain(_config(zoo_dataset, tmp_path / "reference", **cfg))

    interrupted = tmp_path / "interrupted"
    with killed_after_checkpoint(6), pytest.raises(KeyboardInterrupt):
        pretrain(_config(zoo_dataset, interrupted, **cfg))
    checkpoint = interrupted / "checkpoints" / "step_6"
    position = json.loads((checkpoint / "stream_state_0.json").read_text())
    assert position["rows"] == 6 * 4  # the rows of the six batches trained on

    resumed = pretrain(_config(zoo_dataset, interrupted, resume_from_checkpoint="latest", **cfg))
    state = read_trainer_state(resumed)
    assert (state["resumed_from_step"], state["steps_this_run"], state["optimizer_steps"]) == (6, 7, 13)
    assert _losses(resumed) == _losses(reference)
    for key, value in _weights(reference).items():
        assert torch.equal(value, _weights(resumed)[key]), key
