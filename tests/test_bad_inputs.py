"""Bad input, table-driven: every case ends in one clear line naming the file/key/field, what was expected and what
was found, and changes nothing on disk (no partial output, no touched inputs).

Scripts are exercised through their `main_*` entry points in-process (the wrapper that turns user errors into
`"<command>: error: <message>"` and a non-zero exit is the same code the console scripts run); one case runs a
real script in a fresh interpreter to check the exit status and that stderr is that one line. Library loaders are
called directly. Every case prints its message (run with `-s` to list them).
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


REPO = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------------------------------------
# Shared, read-only inputs: a tiny zoo, two tokenizations of it and a SANE pretrained a few steps on one of them
# -------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory, zoo_tools):
    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo
    from sane_hf.training.configs import PretrainConfig
    from sane_hf.training.loop import pretrain

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_inputs_shared")
    zoo = zoo_tools.write_sane_hf_zoo(root / "zoo", num_models=6, num_epochs=1)
    datasets = {}
    for token_size in (16, 32):
        datasets[token_size] = root / f"zoo_ds_t{token_size}"
        config = ConvertConfig(zoo_dir=str(zoo), output_dir=str(datasets[token_size]), token_size=token_size, seed=0)
        convert_zoo(config, show_progress=False)
    sane = pretrain(
        PretrainConfig(
            dataset=str(datasets[16]),
            output_dir=str(root / "sane_t16"),
            d_model=16,
            n_heads=2,
            n_layers=1,
            latent_dim=4,
            window_size=8,
            batch_size=4,
            max_steps=2,
            num_threads=1,
        )
    )
    return {"zoo": zoo, "ds16": datasets[16], "ds32": datasets[32], "sane16": sane, "tools": zoo_tools}


# -------------------------------------------------------------------------------------------------------------------
# How a case runs
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input.

    Args:
        id: the case name.
        build: `build(good, case_dir) -> run`, writing the bad input under `case_dir` and returning a no-argument
            callable that runs the command or loader on it (outputs also go under `case_dir`).
        expect: fragments the message must contain (the file/key/field, what was expected, what was found).
        command: `"library"` (the callable raises) or the console command whose `main_*` the callable runs.
        exit_code: the exit status of a command (1: user error reported by `one_line_errors`; 2: argparse).
    """

    id: str
    build: Callable
    expect: tuple[str, ...]
    command: str = "library"
    exit_code: int = 1


def _cli(main_name: str, *args) -> Callable:
    def run():
        from sane_hf import cli

        getattr(cli, main_name)([str(a) for a in args])

    return run


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _first_checkpoint(zoo: Path) -> Path:
    return sorted((zoo / "models").glob("model_*/checkpoints/epoch_0001.safetensors"))[0]


# --- builders (one per case; each returns the callable to run) -----------------------------------------------------


def missing_zoo(good, d):
    return _cli("main_convert_zoo", "--zoo_dir", d / "no_such_zoo", "--output_dir", d / "out")


def empty_zoo(good, d):
    (d / "empty_zoo").mkdir()
    return _cli("main_convert_zoo", "--zoo_dir", d / "empty_zoo", "--output_dir", d / "out")


def truncated_safetensors(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    file = _first_checkpoint(zoo)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def garbage_safetensors(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    _first_checkpoint(zoo).write_bytes(b"\x00" * 64)
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def truncated_pickle(good, d):
    zoo = good["tools"].write_modelzoo(d / "mz", num_models=3, num_epochs=1)
    file = sorted(zoo.glob("*/checkpoint_*1/checkpoints"))[0]
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def garbage_pickle(good, d):
    zoo = good["tools"].write_modelzoo(d / "mz", num_models=3, num_epochs=1)
    sorted(zoo.glob("*/checkpoint_*1/checkpoints"))[0].write_bytes(b"this is not a pickle\n" * 8)
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def malicious_pickle(good, d):
    zoo = good["tools"].write_modelzoo(d / "mz", num_models=3, num_epochs=1)
    good["tools"].write_malicious_checkpoint(
        sorted(zoo.glob("*/checkpoint_*1/checkpoints"))[1], d.parent / f"{d.name}.marker"
    )

    def run():
        try:
            _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)()
        finally:
            assert not (d.parent / f"{d.name}.marker").exists(), "the pickle's code ran"

    return run


def malicious_model_folder(good, d):
    folder = good["tools"].write_model_folder(d / "models" / "m0", seed=0, pickle=True)
    good["tools"].write_malicious_checkpoint(folder / "pytorch_model.bin", d.parent / f"{d.name}.marker")

    def run():
        from sane_hf.data.zoo import open_zoo

        try:
            list(open_zoo(d / "models", "models").iter_checkpoints())
        finally:
            assert not (d.parent / f"{d.name}.marker").exists(), "the pickle's code ran"

    return run


def other_architecture(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    state = good["tools"].model_state_dict(0, "mlp", in_features=64, hidden_sizes=[8], num_classes=10)
    save_file(state, _first_checkpoint(zoo))
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def all_weights_nan(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    for file in (zoo / "models").glob("*/checkpoints/*.safetensors"):
        save_file({k: torch.full_like(v, math.nan) for k, v in load_file(file).items()}, file)
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def inf_weights_tokenize(good, d):
    def run():
        from sane_hf import TokenLayout

        state = good["tools"].model_state_dict(0)
        layout = TokenLayout.from_state_dict(state, token_size=16)
        state["module_list.3.weight"][0, 0, 0, 0] = math.inf
        layout.tokenize(state)

    return run


def zoo_config_version(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    _edit_json(zoo / "zoo_config.json", format_version=7)
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def output_exists(good, d):
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("mine")
    return _cli("main_convert_zoo", "--zoo_dir", good["zoo"], "--output_dir", d / "out", "--token_size", 16)


def empty_train_split(good, d):
    args = ["--zoo_dir", good["zoo"], "--output_dir", d / "out", "--split_fractions", "0", "0.5", "0.5"]
    return _cli("main_convert_zoo", *args)


def missing_layout(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    (dataset / "meta" / "layout.json").unlink()
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def dataset_format_version(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    _edit_json(dataset / "meta" / "info.json", format_version=99)
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def missing_shard(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    next((dataset / "data").glob("train-*.parquet")).unlink()
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def predict_token_size(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds32"], "--output_dir", d / "predict", "--plots", "false"]
    return _cli("main_predict", *args)


def generate_token_size(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds32"], "--output_dir", d / "gen", "--evaluate", "false"]
    return _cli("main_generate", *args)


def init_from_token_size(good, d):
    args = ["--dataset", good["ds32"], "--init_from", good["sane16"], "--output_dir", d / "sane", "--max_steps", 1]
    return _cli("main_pretrain", *args)


def _nan_sane(good, d: Path) -> Path:
    sane = _copy(good["sane16"], d / "sane_nan")
    weights = load_file(sane / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, sane / "model.safetensors", metadata={"format": "pt"})
    (sane / "sane_checksums.json").unlink()  # as saved before checksums existed: the NaN check is what must fail
    return sane


def nan_sane_predict(good, d):
    args = ["--model", _nan_sane(good, d), "--dataset", good["ds16"], "--output_dir", d / "p", "--plots", "false"]
    return _cli("main_predict", *args)


def nan_sane_generate(good, d):
    args = ["--model", _nan_sane(good, d), "--dataset", good["ds16"], "--output_dir", d / "gen", "--evaluate", "false"]
    return _cli("main_generate", *args, "--num_anchors", 2)


def missing_model(good, d):
    return _cli("main_predict", "--model", d / "no_such_sane", "--dataset", good["ds16"], "--output_dir", d / "p")


def too_many_anchors(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "gen", "--num_anchors", 50]
    return _cli("main_generate", *args, "--evaluate", "false")


def anchors_from_empty_split(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "gen", "--anchor_split", "val"]
    # 6 models split 0.7/0.15/0.15 leave validation without a model ("val" is its format version 1 name)
    return _cli("main_generate", *args, "--num_anchors", 1, "--evaluate", "false")


def anchors_from_an_unknown_split(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "gen", "--anchor_split", "dev"]
    return _cli("main_generate", *args, "--num_anchors", 1, "--evaluate", "false")


def no_checkpoint_of_epochs(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "p", "--checkpoint_epochs", 9]
    return _cli("main_predict", *args)


def batch_larger_than_split(good, d):
    return _cli("main_pretrain", "--dataset", good["ds16"], "--output_dir", d / "sane", "--batch_size", 500)


def streamed_batch_larger_than_split(good, d):
    args = ["--dataset", good["ds16"], "--output_dir", d / "sane", "--batch_size", 500, "--streaming", "true"]
    return _cli("main_pretrain", *args)


def shuffle_buffer_without_streaming(good, d):
    return _cli("main_pretrain", "--dataset", good["ds16"], "--output_dir", d / "sane", "--shuffle_buffer", 4)


def streaming_with_windows_per_checkpoint(good, d):
    args = ["--dataset", good["ds16"], "--output_dir", d / "sane", "--streaming", "true"]
    return _cli("main_pretrain", *args, "--windows_per_checkpoint", 2)


def window_beyond_positions(good, d):
    def run():
        from sane_hf import SaneConfig

        SaneConfig(token_size=16, d_model=16, n_heads=2, n_layers=1, window_size=128, max_positions=[64, 8, 16])

    return run


def window_start_beyond_sequence(good, d):
    def run():
        from sane_hf.data.hub_dataset import load_zoo_dataset
        from sane_hf.data.windows import sample_windows

        zoo = load_zoo_dataset(good["ds16"])
        tokens = zoo.splits["train"][0:2]["tokens"]
        S = tokens.shape[1]
        positions, mask = zoo.layout.positions, zoo.layout.mask
        sample_windows(tokens, 8, positions=positions, mask=mask, starts=torch.tensor([0, S - 4]))

    return run


def _yaml(d: Path, text: str) -> Path:
    path = d / "config.yaml"
    path.write_text(text)
    return path


def yaml_unknown_key(good, d):
    config = _yaml(d, f"output_dir: {d / 'zoo'}\nnum_modles: 4\n")
    return _cli("main_make_zoo", "--config", config)


def yaml_wrong_type_string(good, d):
    config = _yaml(d, f"output_dir: {d / 'zoo'}\nnum_models: four\n")
    return _cli("main_make_zoo", "--config", config)


def yaml_wrong_type_number(good, d):
    config = _yaml(d, f"output_dir: {d / 'zoo'}\nepochs: 2.5\n")
    return _cli("main_make_zoo", "--config", config)


def yaml_not_a_mapping(good, d):
    return _cli("main_make_zoo", "--config", _yaml(d, "- num_models\n- 4\n"))


def yaml_syntax(good, d):
    return _cli("main_make_zoo", "--config", _yaml(d, "num_models: [4\n"))


def yaml_missing_file(good, d):
    return _cli("main_make_zoo", "--config", d / "no_such.yaml")


def make_zoo_other_config(good, d):
    from sane_hf.data.zoo_builder import ZooConfig, _zoo_record
    from sane_hf.tasks import load_task

    # The zoo_config.json build_zoo writes for a 2-epoch zoo; the rerun asks for 3 epochs.
    zoo = _copy(good["zoo"], d / "zoo")
    record = _zoo_record(ZooConfig(output_dir=str(zoo), num_models=6, epochs=2), load_task("digits"))
    (zoo / "zoo_config.json").write_text(json.dumps(record))
    return _cli("main_make_zoo", "--output_dir", zoo, "--num_models", 6, "--epochs", 3)


# --- issue 16: resume only this run's checkpoints, safely; outputs apart from inputs; one writer; no NaN model ----

TINY_SANE = ("--d_model", 16, "--n_heads", 2, "--n_layers", 1, "--latent_dim", 4, "--window_size", 8)


def _pretrained_with_checkpoints(good, d: Path) -> Path:
    """A finished 2-step run in `d/sane` with the step checkpoints step_1 and step_2 (lr 3e-3)."""
    output = d / "sane"
    _cli(
        "main_pretrain",
        "--dataset",
        good["ds16"],
        "--output_dir",
        output,
        *TINY_SANE,
        "--batch_size",
        4,
        "--max_steps",
        2,
        "--save_steps",
        1,
        "--lr",
        3e-3,
        "--num_threads",
        1,
    )()
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step_1", "step_2"]
    return output


def _resume(good, output: Path, *options) -> Callable:
    args = ["--dataset", good["ds16"], "--output_dir", output, *TINY_SANE, "--batch_size", 4, "--save_steps", 1]
    return _cli("main_pretrain", *args, "--num_threads", 1, *options)


def resume_other_configuration(good, d):
    output = _pretrained_with_checkpoints(good, d)
    return _resume(good, output, "--max_steps", 3, "--lr", 3e-4, "--resume_from_checkpoint", "auto")


def resume_other_d_model(good, d):
    output = _pretrained_with_checkpoints(good, d)
    return _resume(good, output, "--max_steps", 2, "--lr", 3e-3, "--resume_from_checkpoint", "auto", "--d_model", 32)


def fresh_run_over_other_checkpoints(good, d):
    output = _pretrained_with_checkpoints(good, d)
    return _resume(good, output, "--max_steps", 2, "--lr", 3e-4)


def _resume_with_planted(good, d, name: str) -> Callable:
    """Resume (same configuration) from a step checkpoint whose `name` is a code-running pickle."""
    output = _pretrained_with_checkpoints(good, d)
    marker = d.parent / f"{d.name}.marker"
    good["tools"].write_malicious_checkpoint(output / "checkpoints" / "step_2" / name, marker)
    run_resume = _resume(good, output, "--max_steps", 2, "--lr", 3e-3, "--resume_from_checkpoint", "auto")

    def run():
        try:
            run_resume()
        finally:
            assert not marker.exists(), "the pickle's code ran"

    return run


def resume_custom_checkpoint_pickle(good, d):
    return _resume_with_planted(good, d, "custom_checkpoint_0.pkl")


def resume_random_states_pickle(good, d):
    return _resume_with_planted(good, d, "random_states_0.pkl")


def resume_optimizer_pickle(good, d):
    return _resume_with_planted(good, d, "optimizer.bin")


def resume_truncated_optimizer_state(good, d):
    output = _pretrained_with_checkpoints(good, d)
    optimizer = output / "checkpoints" / "step_2" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    return _resume(good, output, "--max_steps", 2, "--lr", 3e-3, "--resume_from_checkpoint", "auto")


def convert_into_its_zoo(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", zoo, "--overwrite", "true")


def convert_inside_its_zoo(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", zoo / "ds", "--overwrite", "true")


def generate_into_its_sane(good, d):
    sane = _copy(good["sane16"], d / "sane")
    args = ["--model", sane, "--dataset", good["ds16"], "--output_dir", sane, "--overwrite", "true"]
    return _cli("main_generate", *args, "--evaluate", "false")


def generate_over_its_dataset(good, d):
    dataset = _copy(good["ds16"], d / "data" / "ds")
    args = ["--model", good["sane16"], "--dataset", dataset, "--output_dir", d / "data", "--overwrite", "true"]
    return _cli("main_generate", *args, "--evaluate", "false")


def pretrain_into_its_dataset(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", dataset, "--max_steps", 1)


def predict_into_its_sane(good, d):
    sane = _copy(good["sane16"], d / "sane")
    return _cli("main_predict", "--model", sane, "--dataset", good["ds16"], "--output_dir", sane)


def _locked(target: Path, command: Callable) -> Callable:
    """`command`, run while this process holds `target`'s lock as another writer would."""
    from sane_hf.utils.io import output_lock

    lock = output_lock(target)
    lock.__enter__()
    command.held_lock = lock  # held (the lock file stays) until the test ends, like a writer still running
    return command


def convert_locked(good, d):
    return _locked(d / "out", _cli("main_convert_zoo", "--zoo_dir", good["zoo"], "--output_dir", d / "out"))


def pretrain_locked(good, d):
    return _locked(d / "sane", _cli("main_pretrain", "--dataset", good["ds16"], "--output_dir", d / "sane"))


def generate_locked(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "gen", "--evaluate", "false"]
    return _locked(d / "gen", _cli("main_generate", *args))


def make_zoo_locked(good, d):
    return _locked(d / "zoo", _cli("main_make_zoo", "--output_dir", d / "zoo", "--num_models", 2, "--epochs", 1))


def diverging_pretrain(good, d):
    args = ["--dataset", good["ds16"], "--output_dir", d / "sane", *TINY_SANE, "--batch_size", 4, "--max_steps", 5]
    return _cli("main_pretrain", *args, "--lr", 1e12, "--num_threads", 1)


# --- issue 16: shard checksums, corrupt files, sizes, messages --------------------------------------------------


def _train_shard(dataset: Path) -> Path:
    return next((dataset / "data").glob("train-*.parquet"))


def shard_bytes_flipped(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    shard = _train_shard(dataset)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(255 - b for b in data[middle : middle + 4])  # same size, 4 bytes flipped
    shard.write_bytes(bytes(data))
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def shard_truncated(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    shard = _train_shard(dataset)
    shard.write_bytes(shard.read_bytes()[:1000])
    args = ["--model", good["sane16"], "--dataset", dataset, "--output_dir", d / "p", "--plots", "false"]
    return _cli("main_predict", *args)


def copied_test_shard(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    shutil.copyfile(next((dataset / "data").glob("test-*.parquet")), _train_shard(dataset))
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def _without_checksums(good, d: Path) -> Path:
    """The dataset as written before shards carried checksums (no `checksums` in meta/info.json)."""
    dataset = _copy(good["ds16"], d / "ds")
    info = json.loads((dataset / "meta" / "info.json").read_text())
    del info["checksums"]
    (dataset / "meta" / "info.json").write_text(json.dumps(info))
    return dataset


def unverified_shard_bad_magic(good, d):
    dataset = _without_checksums(good, d)
    shard = _train_shard(dataset)
    shard.write_bytes(shard.read_bytes()[:-4] + b"XXXX")  # parquet files end with the magic "PAR1"
    args = ["--model", good["sane16"], "--dataset", dataset, "--output_dir", d / "gen", "--evaluate", "false"]
    return _cli("main_generate", *args)


def unverified_shard_emptied(good, d):
    dataset = _without_checksums(good, d)
    _train_shard(dataset).write_bytes(b"")
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def zoo_checkpoint_changed(good, d):
    zoo = good["tools"].write_sane_hf_zoo(d / "zoo", num_models=6, num_epochs=1, checksums=True)
    file = _first_checkpoint(zoo)
    save_file({k: v + 0.5 for k, v in load_file(file).items()}, file)  # a valid file, other weights
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def done_with_epoch_missing(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    _first_checkpoint(zoo).unlink()
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def empty_done(good, d):
    zoo = _copy(good["zoo"], d / "zoo")
    (zoo / "models" / "model_0002" / "DONE").write_bytes(b"")
    return _cli("main_convert_zoo", "--zoo_dir", zoo, "--output_dir", d / "out", "--token_size", 16)


def epochs_the_zoo_lacks(good, d):
    args = ["--zoo_dir", good["zoo"], "--output_dir", d / "out", "--token_size", 16, "--epochs", 7, 8]
    return _cli("main_convert_zoo", *args)


def _damaged_sane(good, d: Path, damage: str, checksums: bool = True) -> Path:
    """A copy of the pretrained SANE with `damage` done to it (with or without its `sane_checksums.json`)."""
    sane = _copy(good["sane16"], d / "sane_bad")
    weights = sane / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip_header":  # the 8-byte header length, little-endian, becomes huge
        weights.write_bytes(b"\xff\xff\xff\x7f" + weights.read_bytes()[4:])
    elif damage in ("d_model", "token_size"):
        _edit_json(sane / "config.json", **{damage: 32})
    elif damage == "processor":
        (sane / "preprocessor_config.json").write_text("garbage")
    if not checksums:
        (sane / "sane_checksums.json").unlink()
    return sane


def _predict_with(sane: Path, good, d: Path) -> Callable:
    args = ["--model", sane, "--dataset", good["ds16"], "--output_dir", d / "p", "--plots", "false"]
    return _cli("main_predict", *args)


def _generate_with(sane: Path, good, d: Path) -> Callable:
    args = ["--model", sane, "--dataset", good["ds16"], "--output_dir", d / "gen", "--evaluate", "false"]
    return _cli("main_generate", *args, "--num_anchors", 2)


def _init_from(sane: Path, good, d: Path) -> Callable:
    return _cli(
        "main_pretrain", "--dataset", good["ds16"], "--init_from", sane, "--output_dir", d / "s", "--max_steps", 1
    )


def sane_truncated_predict(good, d):
    return _predict_with(_damaged_sane(good, d, "truncate"), good, d)


def sane_header_flipped_generate(good, d):
    return _generate_with(_damaged_sane(good, d, "flip_header"), good, d)


def unverified_sane_truncated_init_from(good, d):
    return _init_from(_damaged_sane(good, d, "truncate", checksums=False), good, d)


def unverified_sane_header_flipped_predict(good, d):
    return _predict_with(_damaged_sane(good, d, "flip_header", checksums=False), good, d)


def sane_config_d_model_predict(good, d):
    return _predict_with(_damaged_sane(good, d, "d_model"), good, d)


def sane_config_token_size_init_from(good, d):
    return _init_from(_damaged_sane(good, d, "token_size"), good, d)


def sane_garbage_processor_generate(good, d):
    return _generate_with(_damaged_sane(good, d, "processor"), good, d)


def generated_model_truncated_evaluate(good, d):
    _generate_with(good["sane16"], good, d)()
    generation = json.loads((d / "gen" / "generation.json").read_text())
    del generation["checksums"]  # as written before checksums existed: the header check is what must fail
    (d / "gen" / "generation.json").write_text(json.dumps(generation))
    weights = d / "gen" / "model_000" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return _cli("main_evaluate", "--models", d / "gen", "--output_dir", d / "eval")


def yaml_duplicate_key(good, d):
    return _cli("main_make_zoo", "--config", _yaml(d, f"output_dir: {d / 'zoo'}\nepochs: 1\nepochs: 2\n"))


def yaml_null_output_dir(good, d):
    config = _yaml(d, f"dataset: {good['ds16']}\noutput_dir: null\n")
    return _cli("main_pretrain", "--config", config, "--max_steps", 1)


def yaml_max_positions_int(good, d):
    config = _yaml(d, f"dataset: {good['ds16']}\noutput_dir: {d / 'sane'}\nmax_positions: 5\n")
    return _cli("main_pretrain", "--config", config, "--max_steps", 1)


def absent_gpu(good, d):
    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "p", "--device", device]
    return _cli("main_predict", *args)


def huge_token_size(good, d):
    args = ["--zoo_dir", good["zoo"], "--output_dir", d / "out", "--token_size", 10**11]
    return _cli("main_convert_zoo", *args)


def huge_d_model(good, d):
    args = ["--dataset", good["ds16"], "--output_dir", d / "sane", "--d_model", 10**6, "--max_steps", 1]
    return _cli("main_pretrain", *args)


def huge_n(good, d):
    args = ["--model", good["sane16"], "--dataset", good["ds16"], "--output_dir", d / "gen", "--n", 10**9]
    return _cli("main_generate", *args, "--sampler", "kde", "--evaluate", "false")


def _weight_rows(zoo: Path) -> int:
    return sum(t.shape[0] for t in load_file(_first_checkpoint(zoo)).values() if t.dim() >= 2)


def _generated_gib(dataset: Path, n: int) -> str:
    layout = json.loads((dataset / "meta" / "layout.json").read_text())
    return f"{n * layout['num_tokens'] * layout['token_size'] * 4 / 2**30:,.1f} GiB"


def sane_card_unwritable_predict(good, d):
    # Root (as in CI containers) writes into read-only folders, so the card write is made to fail another way: the
    # file it replaces is a folder. The results must not be written before the card fails.
    sane = _copy(good["sane16"], d / "sane")
    (sane / "sane_probe_results.json").mkdir()
    args = ["--model", sane, "--dataset", good["ds16"], "--output_dir", d / "p", "--plots", "false"]
    return _cli("main_predict", *args, "--properties", "test_acc", "--poolings", "mean")


def rows_disagree_with_meta(good, d):
    dataset = _copy(good["ds16"], d / "ds")
    info = json.loads((dataset / "meta" / "info.json").read_text())
    info["splits"]["train"]["num_checkpoints"] = 9
    (dataset / "meta" / "info.json").write_text(json.dumps(info))
    return _cli("main_pretrain", "--dataset", dataset, "--output_dir", d / "sane", "--max_steps", 1)


def make_zoo_epochs_beyond_bound(good, d):
    config = _yaml(d, f"output_dir: {d / 'zoo'}\nepochs: {10**21}\n")
    return _cli("main_make_zoo", "--config", config)


def missing_dataset_path(good, d):
    return _cli("main_pretrain", "--dataset", d / "no_such_ds", "--output_dir", d / "sane", "--max_steps", 1)


def missing_init_from_path(good, d):
    args = ["--dataset", good["ds16"], "--init_from", d / "no_such_sane", "--output_dir", d / "sane"]
    return _cli("main_pretrain", *args, "--max_steps", 1)


def missing_generate_dataset_path(good, d):
    args = ["--model", good["sane16"], "--dataset", d / "no_such_ds", "--output_dir", d / "gen", "--evaluate", "false"]
    return _cli("main_generate", *args)


def cnn_sane_on_mlp_dataset(good, d):
    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo

    mlp = {"in_features": 64, "hidden_sizes": [8], "num_classes": 10}
    zoo = good["tools"].write_sane_hf_zoo(
        d / "mlp_zoo", num_models=6, num_epochs=1, architecture="mlp", model_kwargs=mlp
    )
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(d / "mlp_ds"), token_size=16), show_progress=False)
    args = ["--model", good["sane16"], "--dataset", d / "mlp_ds", "--output_dir", d / "p", "--plots", "false"]
    return _cli("main_predict", *args)


def make_zoo_over_empty_done(good, d):
    _cli("main_make_zoo", "--output_dir", d / "zoo", "--num_models", 2, "--epochs", 1)()
    (d / "zoo" / "models" / "model_0001" / "DONE").write_bytes(b"")
    return _cli("main_make_zoo", "--output_dir", d / "zoo", "--num_models", 2, "--epochs", 1)


def generated_model_changed_evaluate(good, d):
    _generate_with(good["sane16"], good, d)()
    weights = d / "gen" / "model_001" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])  # same size, a weight's bytes flipped: loads fine, other values
    weights.write_bytes(bytes(data))
    return _cli("main_evaluate", "--models", d / "gen", "--output_dir", d / "eval")


CASES = [
    Case("zoo folder missing", missing_zoo, ("no_such_zoo", "zoo folder not found"), "sane-convert-zoo"),
    Case("zoo folder empty", empty_zoo, ("empty_zoo", "zoo folder is empty"), "sane-convert-zoo"),
    Case(
        "truncated safetensors checkpoint",
        truncated_safetensors,
        ("epoch_0001.safetensors", "corrupt or truncated safetensors checkpoint"),
        "sane-convert-zoo",
    ),
    Case(
        "garbage safetensors checkpoint",
        garbage_safetensors,
        ("epoch_0001.safetensors", "corrupt or truncated safetensors checkpoint"),
        "sane-convert-zoo",
    ),
    Case(
        "truncated pickle checkpoint",
        truncated_pickle,
        ("checkpoints", "corrupt or truncated checkpoint"),
        "sane-convert-zoo",
    ),
    Case(
        "garbage pickle checkpoint",
        garbage_pickle,
        ("checkpoints", "corrupt or truncated checkpoint", "expected a complete torch.save'd state_dict"),
        "sane-convert-zoo",
    ),
    Case(
        "code-running pickle in an original-format zoo",
        malicious_pickle,
        ("checkpoints", "refused to load", "weights_only=True", "GLOBAL io.open"),
        "sane-convert-zoo",
    ),
    Case(
        "code-running pytorch_model.bin in a model folder",
        malicious_model_folder,
        ("pytorch_model.bin", "refused to load", "weights_only=True"),
    ),
    Case(
        "checkpoint of another architecture in the zoo",
        other_architecture,
        ("epoch_0001.safetensors", "checkpoint of another architecture", "tensors instead of", "reference:"),
        "sane-convert-zoo",
    ),
    Case(
        "every checkpoint NaN",
        all_weights_nan,
        ("no checkpoint of the train split survived filtering", "8 checkpoints", "NaN/Inf"),
        "sane-convert-zoo",
    ),
    Case(
        "Inf weight in a state_dict to tokenize",
        inf_weights_tokenize,
        ("module_list.3.weight", "NaN/Inf", "expected finite weights"),
    ),
    Case(
        "zoo_config.json of another format version",
        zoo_config_version,
        ("zoo_config.json", "expected format_version 1, found 7"),
        "sane-convert-zoo",
    ),
    Case("output folder not empty", output_exists, ("out", "not empty", "--overwrite"), "sane-convert-zoo"),
    Case(
        "empty train split",
        empty_train_split,
        ("the train split is empty", "6 models", "fractions [0.0, 0.5, 0.5]"),
        "sane-convert-zoo",
    ),
    Case("dataset without meta/layout.json", missing_layout, ("meta/layout.json", "missing"), "sane-pretrain"),
    Case(
        "dataset of another format version",
        dataset_format_version,
        ("meta/info.json", "format_version 99", "reads format_version 1"),
        "sane-pretrain",
    ),
    Case(
        "dataset missing a parquet shard", missing_shard, ("train-00000-of-00001.parquet", "missing"), "sane-pretrain"
    ),
    Case(
        "SANE token size != dataset token size (predict)",
        predict_token_size,
        ("token_size 16", "token_size 32", "sane_t16", "zoo_ds_t32"),
        "sane-predict",
    ),
    Case(
        "SANE token size != dataset token size (generate)",
        generate_token_size,
        ("token_size 16 vs 32", "weight processor", "sane_t16", "zoo_ds_t32"),
        "sane-generate",
    ),
    Case(
        "SANE token size != dataset token size (pretrain --init_from)",
        init_from_token_size,
        ("token_size 16", "has 32", "sane_t16", "zoo_ds_t32"),
        "sane-pretrain",
    ),
    Case(
        "SANE with NaN weights (predict)",
        nan_sane_predict,
        ("--model", "sane_nan", "NaN/Inf", "expected finite weights"),
        "sane-predict",
    ),
    Case(
        "SANE with NaN weights (generate)",
        nan_sane_generate,
        ("--model", "sane_nan", "NaN/Inf", "expected finite weights"),
        "sane-generate",
    ),
    Case(
        "SANE folder missing", missing_model, ("--model", "no_such_sane", "no such SANE model folder"), "sane-predict"
    ),
    Case(
        "more anchors than the split has",
        too_many_anchors,
        ("`num_anchors`=50", "only 4 checkpoint(s)", "--num_anchors 4"),
        "sane-generate",
    ),
    Case(
        "anchors from an empty split", anchors_from_empty_split, ("no split 'validation'", "'train'"), "sane-generate"
    ),
    Case(
        "anchors from an unknown split",
        anchors_from_an_unknown_split,
        ("Unknown split 'dev'", "['train', 'validation', 'test']"),
        "sane-generate",
    ),
    Case(
        "checkpoint_epochs selects nothing",
        no_checkpoint_of_epochs,
        ("No train checkpoints", "`checkpoint_epochs` [9]", "train epochs [0, 1]"),
        "sane-predict",
    ),
    Case(
        "batch larger than the train split",
        batch_larger_than_split,
        ("train split has 8 windows per epoch", "batch_size=500"),
        "sane-pretrain",
    ),
    Case(
        "streamed pretraining with a batch larger than the split",
        streamed_batch_larger_than_split,
        ("streamed train split has 8 checkpoints, 8 per process", "batch_size=500"),
        "sane-pretrain",
    ),
    Case(
        "shuffle_buffer without streaming",
        shuffle_buffer_without_streaming,
        ("`shuffle_buffer`=4 needs `streaming`=True", "pass --streaming"),
        "sane-pretrain",
        2,
    ),
    Case(
        "streaming with windows_per_checkpoint",
        streaming_with_windows_per_checkpoint,
        ("`windows_per_checkpoint`=2 needs an in-memory dataset", "windows_per_checkpoint=1 with --streaming"),
        "sane-pretrain",
        2,
    ),
    Case("window larger than the position table", window_beyond_positions, ("window_size", "128", "max_positions")),
    Case(
        "window start beyond the sequence",
        window_start_beyond_sequence,
        ("`starts`", "values in [0,", "window of 8 tokens inside a sequence of"),
    ),
    Case(
        "YAML config: unknown key",
        yaml_unknown_key,
        ("unknown key(s) ['num_modles']", "config.yaml", "valid keys"),
        "sane-make-zoo",
        2,
    ),
    Case(
        "YAML config: wrong type (string for int)",
        yaml_wrong_type_string,
        ("--num_models", "invalid int value: 'four'", "config.yaml"),
        "sane-make-zoo",
        2,
    ),
    Case(
        "YAML config: wrong type (float for int)",
        yaml_wrong_type_number,
        ("`epochs` must be an int >= 0, got 2.5", "config.yaml"),
        "sane-make-zoo",
        2,
    ),
    Case(
        "YAML config: not a mapping",
        yaml_not_a_mapping,
        ("config.yaml", "mapping", "found a list"),
        "sane-make-zoo",
        2,
    ),
    Case("YAML config: syntax error", yaml_syntax, ("config.yaml", "invalid YAML", "line"), "sane-make-zoo", 2),
    Case("YAML config: file missing", yaml_missing_file, ("no_such.yaml", "cannot read"), "sane-make-zoo", 2),
    Case(
        "zoo folder built with another configuration",
        make_zoo_other_config,
        ("different configuration", "epochs: stored 2, requested 3"),
        "sane-make-zoo",
    ),
    Case(
        "resume from a checkpoint of another run configuration",
        resume_other_configuration,
        (
            "step_2 is a checkpoint of a run with another configuration",
            "differing options: lr, max_steps",
            "lr: stored 0.003, requested 0.0003",
            "max_steps: stored 2, requested 3",
        ),
        "sane-pretrain",
    ),
    Case(
        "resume with another --d_model",
        resume_other_d_model,
        ("step_2 is a checkpoint of a run with another configuration", "differing options: d_model", "stored 16"),
        "sane-pretrain",
    ),
    Case(
        "fresh run into a folder with another run's step checkpoints",
        fresh_run_over_other_checkpoints,
        ("holds step checkpoints of another run", "differing options: lr", "Use another output_dir"),
        "sane-pretrain",
    ),
    Case(
        "resume: code-running custom_checkpoint pickle in the step checkpoint",
        resume_custom_checkpoint_pickle,
        ("custom_checkpoint_0.pkl", "refused to resume", "never writes custom_checkpoint pickles"),
        "sane-pretrain",
    ),
    Case(
        "resume: code-running random-states pickle in the step checkpoint",
        resume_random_states_pickle,
        ("random_states_0.pkl", "refused to resume", "weights_only=True"),
        "sane-pretrain",
    ),
    Case(
        "resume: code-running optimizer state in the step checkpoint",
        resume_optimizer_pickle,
        ("step_2: refused to resume", "weights_only=True"),
        "sane-pretrain",
    ),
    Case(
        "resume: truncated optimizer state in the step checkpoint",
        resume_truncated_optimizer_state,
        ("step_2: cannot resume: a state file is corrupt or does not fit this run", "RuntimeError"),
        "sane-pretrain",
    ),
    Case(
        "convert --overwrite into its own zoo", convert_into_its_zoo, ("is the input `zoo_dir`",), "sane-convert-zoo"
    ),
    Case(
        "convert --overwrite into a folder inside its zoo",
        convert_inside_its_zoo,
        ("is inside the input `zoo_dir`",),
        "sane-convert-zoo",
    ),
    Case("generate --overwrite into its SANE", generate_into_its_sane, ("is the input `model`",), "sane-generate"),
    Case(
        "generate --overwrite into its dataset's parent",
        generate_over_its_dataset,
        ("contains the input `dataset`",),
        "sane-generate",
    ),
    Case("pretrain into its dataset", pretrain_into_its_dataset, ("is the input `dataset`",), "sane-pretrain"),
    Case("predict into its SANE", predict_into_its_sane, ("is the input `model`",), "sane-predict"),
    Case(
        "convert while another writer holds the output",
        convert_locked,
        ("is being written by another process", f"pid {os.getpid()} on host", "lock file"),
        "sane-convert-zoo",
    ),
    Case(
        "pretrain while another writer holds the output",
        pretrain_locked,
        ("is being written by another process", f"pid {os.getpid()} on host", "lock file"),
        "sane-pretrain",
    ),
    Case(
        "generate while another writer holds the output",
        generate_locked,
        ("is being written by another process", f"pid {os.getpid()} on host", "lock file"),
        "sane-generate",
    ),
    Case(
        "make_zoo while another writer holds the output",
        make_zoo_locked,
        ("is being written by another process", f"pid {os.getpid()} on host", "lock file"),
        "sane-make-zoo",
    ),
    Case(
        "diverging pretraining (lr 1e12)",
        diverging_pretrain,
        ("The loss became", "at step", "stopping without saving a model", "Lower --lr (now 1e+12)"),
        "sane-pretrain",
    ),
    Case(
        "dataset shard with 4 bytes flipped",
        shard_bytes_flipped,
        ("train-00000-of-00001.parquet: sha256", "does not match", "meta/info.json (train shard)"),
        "sane-pretrain",
    ),
    Case(
        "truncated dataset shard",
        shard_truncated,
        ("train-00000-of-00001.parquet: 1000 bytes, but", "truncated"),
        "sane-predict",
    ),
    Case(
        "test shard copied over a train shard",
        copied_test_shard,
        ("train-00000-of-00001.parquet: has the content of the test shard data/test-00000", "copied over"),
        "sane-pretrain",
    ),
    Case(
        "unverified dataset: shard with a bad magic number",
        unverified_shard_bad_magic,
        ("train-00000-of-00001.parquet: corrupt or truncated parquet shard",),
        "sane-generate",
    ),
    Case(
        "unverified dataset: emptied shard",
        unverified_shard_emptied,
        ("train-00000-of-00001.parquet: corrupt or truncated parquet shard",),
        "sane-pretrain",
    ),
    Case(
        "zoo checkpoint changed after its model finished",
        zoo_checkpoint_changed,
        ("epoch_0001.safetensors: sha256", "does not match", "model_0000/DONE"),
        "sane-convert-zoo",
    ),
    Case(
        "model marked DONE with an epoch file missing",
        done_with_epoch_missing,
        ("epoch_0001.safetensors: missing", "DONE marks the model finished with 2 checkpoints (1 missing)"),
        "sane-convert-zoo",
    ),
    Case(
        "empty DONE file",
        empty_done,
        ("model_0002/DONE: found an empty file", "expected the JSON summary sane-make-zoo writes"),
        "sane-convert-zoo",
    ),
    Case(
        "--epochs the zoo does not have",
        epochs_the_zoo_lacks,
        ("`epochs` [7, 8] selects no checkpoint of the train split", "its models have epochs 0-1"),
        "sane-convert-zoo",
    ),
    Case(
        "SANE model.safetensors truncated (predict)",
        sane_truncated_predict,
        ("sane_bad/model.safetensors:", "bytes, but", "sane_checksums.json records", "truncated"),
        "sane-predict",
    ),
    Case(
        "SANE model.safetensors header flipped (generate)",
        sane_header_flipped_generate,
        ("sane_bad/model.safetensors: sha256", "does not match", "sane_checksums.json"),
        "sane-generate",
    ),
    Case(
        "SANE saved without checksums, model.safetensors truncated (pretrain --init_from)",
        unverified_sane_truncated_init_from,
        ("sane_bad/model.safetensors: corrupt or truncated safetensors file",),
        "sane-pretrain",
    ),
    Case(
        "SANE saved without checksums, model.safetensors header flipped (predict)",
        unverified_sane_header_flipped_predict,
        ("sane_bad/model.safetensors: corrupt or truncated safetensors file", "header too large"),
        "sane-predict",
    ),
    Case(
        "SANE config.json d_model does not fit the weights (predict)",
        sane_config_d_model_predict,
        ("sane_bad/config.json: does not fit the weights", "[48, 16] there but [96, 32] by the config"),
        "sane-predict",
    ),
    Case(
        "SANE config.json token_size does not fit the weights (pretrain --init_from)",
        sane_config_token_size_init_from,
        ("sane_bad/config.json: does not fit the weights", "input_projection.weight is [16, 16] there but [16, 32]"),
        "sane-pretrain",
    ),
    Case(
        "SANE weight processor preprocessor_config.json garbage (generate)",
        sane_garbage_processor_generate,
        ("sane_bad/preprocessor_config.json is not valid JSON",),
        "sane-generate",
    ),
    Case(
        "generated model.safetensors truncated (evaluate)",
        generated_model_truncated_evaluate,
        ("model_000/model.safetensors: corrupt or truncated safetensors file",),
        "sane-evaluate",
    ),
    Case(
        "YAML config: duplicate key",
        yaml_duplicate_key,
        ("config.yaml", "duplicate key 'epochs'", "line 3"),
        "sane-make-zoo",
        2,
    ),
    Case(
        "YAML config: output_dir null",
        yaml_null_output_dir,
        ("config.yaml: `output_dir: null`", "needs a value (default 'runs/sane')"),
        "sane-pretrain",
        2,
    ),
    Case(
        "YAML config: max_positions an int",
        yaml_max_positions_int,
        ("`max_positions` must be a list of 3 positive ints", "got 5", "config.yaml"),
        "sane-pretrain",
        2,
    ),
    Case(
        "--device of a GPU this machine lacks (predict)",
        absent_gpu,
        (f"`device` 'cuda:{torch.cuda.device_count()}'", f"{torch.cuda.device_count()} CUDA device(s)"),
        "sane-predict",
        2,
    ),
    Case(
        "token_size too large for memory (convert)",
        huge_token_size,
        ("`token_size`=100000000000", "GiB of memory, more than this machine's"),
        "sane-convert-zoo",
    ),
    Case(
        "d_model too large for memory (pretrain)",
        huge_d_model,
        ("`d_model`=1000000", "parameters x 4 bytes x 4", "GiB of memory, more than this machine's"),
        "sane-pretrain",
    ),
    Case(
        "n too large for memory (generate)",
        huge_n,
        ("`n`=1000000000", "x 4 bytes) needs about", "more than this machine's"),
        "sane-generate",
    ),
    Case(
        "predict cannot update the SANE's card",
        sane_card_unwritable_predict,
        ("Is a directory", "sane_probe_results.json"),
        "sane-predict",
    ),
    Case(
        "dataset rows disagree with meta/info.json",
        rows_disagree_with_meta,
        ("the train split has 8 rows, meta/info.json says 9",),
        "sane-pretrain",
    ),
    Case(
        "make_zoo epochs beyond the documented bound",
        make_zoo_epochs_beyond_bound,
        ("`epochs` must be <= 10,000, got 1,000,000,000,000,000,000,000", "config.yaml"),
        "sane-make-zoo",
        2,
    ),
    Case(
        "--dataset path missing (pretrain)",
        missing_dataset_path,
        ("--dataset", "no_such_ds: no such tokenized zoo dataset folder"),
        "sane-pretrain",
    ),
    Case(
        "--init_from path missing (pretrain)",
        missing_init_from_path,
        ("--init_from", "no_such_sane: no such SANE model folder"),
        "sane-pretrain",
    ),
    Case(
        "--dataset path missing (generate)",
        missing_generate_dataset_path,
        ("--dataset", "no_such_ds: no such tokenized zoo dataset folder"),
        "sane-generate",
    ),
    Case(
        "CNN SANE on an MLP dataset (predict)",
        cnn_sane_on_mlp_dataset,
        ("pretrained on another architecture", "its weight processor has 5 layers", "meta/layout.json has 2"),
        "sane-predict",
    ),
    Case(
        "make_zoo rerun over an empty DONE",
        make_zoo_over_empty_done,
        ("model_0001/DONE: found an empty file", "delete DONE and rerun sane-make-zoo"),
        "sane-make-zoo",
    ),
    Case(
        "generated model.safetensors changed after generation (evaluate)",
        generated_model_changed_evaluate,
        ("model_001/model.safetensors: sha256", "does not match", "gen/generation.json"),
        "sane-evaluate",
    ),
]


# -------------------------------------------------------------------------------------------------------------------
# The table
# -------------------------------------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with a hash of its content: any write shows as a difference."""
    snap = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        snap[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return snap


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_one_clear_line_and_leaves_nothing(case, good, tmp_path, capsys):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    run = case.build(good, case_dir)
    before = _snapshot(case_dir)
    capsys.readouterr()
    if case.command == "library":
        with pytest.raises((ValueError, OSError)) as info:
            run()
        message = str(info.value)
        assert "\n" not in message.strip(), message
    else:
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code == case.exit_code
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        message = [line for line in err.splitlines() if line.strip()][-1]
        prefix = f"{case.command}: error: " if case.exit_code == 1 else ": error: "
        assert prefix in message, err
    print(f"\n- {case.id} [{case.command}]: {message}")  # the list of cases and messages (pytest -s)
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert _snapshot(case_dir) == before, "the failing command changed files on disk"
    assert not list(tmp_path.glob("*.marker"))


def test_script_exits_non_zero_with_one_line_on_stderr(tmp_path):
    """A real console script in a fresh interpreter: exit status 1, stderr exactly the error line, no output."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "convert_zoo.py"),
            "--zoo_dir",
            str(tmp_path / "no_such_zoo"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sane-convert-zoo: error: {tmp_path / 'no_such_zoo'}: zoo folder not found (for Hub model repo ids, pass "
        "zoo_format='models' explicitly)."
    ], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_window_larger_than_the_sequence_is_clipped_with_a_warning(good, tmp_path, caplog):
    """Pretraining clips a window longer than the sequence to the whole sequence (documented), and says so."""
    from sane_hf.data.hub_dataset import load_zoo_dataset
    from sane_hf.training.configs import PretrainConfig
    from sane_hf.training.loop import build_sane_config

    layout = load_zoo_dataset(good["ds16"]).layout
    config = build_sane_config(PretrainConfig(dataset=str(good["ds16"]), window_size=10_000), layout)
    assert config.window_size == layout.num_tokens
    assert f"`window_size`=10000 is larger than the dataset's sequence ({layout.num_tokens} tokens)" in caplog.text


def test_a_dataset_written_before_checksums_loads_unverified_with_a_warning(good, tmp_path, caplog):
    from sane_hf.data.hub_dataset import load_zoo_dataset

    zoo = load_zoo_dataset(_without_checksums(good, tmp_path))
    assert zoo.splits["train"].num_rows == 8
    assert "its shards are loaded unverified" in caplog.text


def test_written_shards_carry_their_split_size_and_sha256(good):
    info = json.loads((good["ds16"] / "meta" / "info.json").read_text())
    shards = sorted(p.relative_to(good["ds16"]).as_posix() for p in (good["ds16"] / "data").glob("*.parquet"))
    assert sorted(info["checksums"]) == shards
    for name, recorded in info["checksums"].items():
        data = (good["ds16"] / name).read_bytes()
        split = Path(name).name.split("-")[0]
        assert recorded == {"split": split, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_make_zoo_records_each_checkpoint_size_and_sha256_in_done(tmp_path):
    from sane_hf import cli

    cli.main_make_zoo(["--output_dir", str(tmp_path / "zoo"), "--num_models", "1", "--epochs", "1"])
    folder = tmp_path / "zoo" / "models" / "model_0000"
    recorded = json.loads((folder / "DONE").read_text())["checkpoints"]
    files = sorted((folder / "checkpoints").iterdir())
    assert [f.name for f in files] == ["epoch_0000.safetensors", "epoch_0001.safetensors"]
    assert recorded == {
        f.name: {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files
    }


def test_a_weight_beyond_the_default_threshold_is_dropped_and_counted(good, tmp_path):
    """One |w| = 1e30 would set its layer's normalization scale; by default its checkpoint is dropped, counted."""
    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo

    zoo = _copy(good["zoo"], tmp_path / "zoo")
    file = _first_checkpoint(zoo)
    weights = load_file(file)
    weights["module_list.0.weight"][0, 0, 0, 0] = 1e30
    save_file(weights, file)
    info = convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(tmp_path / "ds"), token_size=16, seed=0)).info
    assert info.weight_threshold == 1e6
    assert info.filtering["dropped_checkpoint_counts"] == {"above_threshold": 1}
    assert info.num_checkpoints == 12 - 1
    stds = json.loads((tmp_path / "ds" / "meta" / "normalization.json").read_text())["layers"]
    assert max(layer["std"] for layer in stds.values()) < 10


def test_size_errors_name_the_estimated_bytes(good, tmp_path, capsys):
    """The estimates in the size errors, against sizes computed here from the zoo's and the dataset's files."""
    rows = _weight_rows(good["zoo"])
    with pytest.raises(SystemExit):
        huge_token_size(good, tmp_path)()
    err = capsys.readouterr().err
    assert f"at least {rows} tokens x 100000000000 values" in err
    assert f"needs about {rows * 10**11 * 4 * 2 / 2**30:,.1f} GiB" in err
    with pytest.raises(SystemExit):
        huge_n(good, tmp_path)()
    assert f"needs about {_generated_gib(good['ds16'], 10**9)}" in capsys.readouterr().err
