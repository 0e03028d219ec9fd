"""The pretraining loop: the objective learns, runs are reproducible, resume is exact, DDP keeps ranks in sync."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.data.zoo_permutations import build_permuter
from sane_hf.training import loop as pretrain_loop
from sane_hf.training.checkpoints import read_trainer_state
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import pretrain, step_generator, train_step
from sane_hf.zoo_models import build_zoo_model


REPO = Path(__file__).resolve().parents[2]
MLP_KWARGS = {"in_features": 16, "hidden_sizes": [8], "num_classes": 4}


def _write_zoo(root: Path, num_models: int = 12, num_epochs: int = 3) -> Path:
    """A tiny zoo in our own format: MLPs whose weights drift with the epoch, made-up but consistent metrics."""
    (root / "models").mkdir(parents=True)
    task = {"name": "synthetic", "num_classes": 4}
    (root / "zoo_config.json").write_text(json.dumps({"format": "sane_hf-zoo", "format_version": 1, "task": task}))
    for index in range(num_models):
        model_id = f"model_{index:04d}"
        folder = root / "models" / model_id
        (folder / "checkpoints").mkdir(parents=True)
        torch.manual_seed(index)
        base = build_zoo_model("mlp", **MLP_KWARGS).state_dict()
        params = {
            "model_id": model_id,
            "index": index,
            "architecture": "mlp",
            "model_kwargs": MLP_KWARGS,
            "task": "synthetic",
            "seed": index,
            "lr": 0.01,
            "weight_decay": 0.0,
            "optimizer": "adam",
            "init": "default",
            "activation": "relu",
            "dropout": 0.0,
            "batch_size": 8,
            "epochs": num_epochs,
        }
        (folder / "params.json").write_text(json.dumps(params))
        lines = []
        for epoch in range(num_epochs + 1):
            state = {k: (v * (1 + 0.2 * epoch)).contiguous() for k, v in base.items()}
            save_file(state, str(folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"))
            acc = 0.25 + 0.05 * epoch + 0.01 * index
            lines.append(
                json.dumps(
                    {
                        "epoch": epoch,
                        "train_loss": 1.0,
                        "train_acc": acc + 0.01,
                        "val_loss": 1.0,
                        "val_acc": acc,
                        "test_loss": 1.0,
                        "test_acc": acc,
                        "ggap": 0.01,
                    }
                )
            )
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "DONE").write_text("{}")
    return root


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    zoo = _write_zoo(root / "zoo")
    output = root / "zoo_ds"
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(output), seed=0), show_progress=False)
    return output


def _config(dataset: Path, output: Path, **overrides) -> PretrainConfig:
    values = dict(
        dataset=str(dataset),
        output_dir=str(output),
        d_model=16,
        n_heads=2,
        n_layers=1,
        latent_dim=4,
        window_size=8,
        epochs=20,
        batch_size=8,
        lr=3e-3,
        seed=5,
        logging_steps=5,
        num_threads=1,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


class _TrainStepSpy:
    """Stands in for `pretrain`'s `train_step` (and calls it): records the training calls (validation calls it with
    `augment=False`), the model and rows of each, and the weights the model holds at the first call."""

    def __init__(self):
        self.models, self.rows = [], []
        self.first_weights: dict[str, torch.Tensor] = {}

    def __call__(self, model, batch, *args, **kwargs):
        if kwargs.get("augment", True):
            if not self.first_weights:
                self.first_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.models.append(model)
            self.rows.append(batch["rows"].clone() if "rows" in batch else None)
        return train_step(model, batch, *args, **kwargs)

    def patch(self):
        return mock.patch.object(pretrain_loop, "train_step", self)


def test_config_validation():
    with pytest.raises(ValueError, match="`dataset` is required"):
        PretrainConfig()
    with pytest.raises(ValueError, match="`mixed_precision` must be one of"):
        PretrainConfig(dataset="x", mixed_precision="fp8")
    with pytest.raises(ValueError, match="`gamma` must be in"):
        PretrainConfig(dataset="x", gamma=2.0)


def test_train_step_is_deterministic_and_uses_permutations(tiny_dataset, tmp_path):
    zoo = load_zoo_dataset(tiny_dataset)
    cfg = _config(tiny_dataset, tmp_path)
    model = pretrain_loop.load_or_build_model(cfg, zoo)
    permuter = build_permuter(zoo)
    tokens = torch.stack([zoo.splits["train"][i]["tokens"] for i in range(8)])
    batch = {"full_tokens": tokens}
    a = train_step(model, batch, cfg, zoo.layout, permuter, step_generator(1, 0, 0))
    b = train_step(model, batch, cfg, zoo.layout, permuter, step_generator(1, 0, 0))
    c = train_step(model, batch, cfg, zoo.layout, permuter, step_generator(1, 1, 0))
    assert set(a) >= {"loss", "loss_recon", "loss_contrast", "r2"}
    assert torch.isfinite(a["loss"]) and torch.equal(a["loss"], b["loss"])
    assert not torch.equal(a["loss"], c["loss"])
    expected = cfg.gamma * a["loss_contrast"] + (1 - cfg.gamma) * a["loss_recon"]
    assert torch.allclose(a["loss"], expected)


def test_train_step_reads_the_window_of_a_wrapped_model(tiny_dataset, tmp_path):
    """Under DDP the model is wrapped in a module without `config`; the window must still be the model's own (with
    `--init_from` it differs from `cfg.window_size`). `DataParallel` on CPU is such a wrapper that runs in-process."""
    zoo = load_zoo_dataset(tiny_dataset)
    model = pretrain_loop.load_or_build_model(_config(tiny_dataset, tmp_path, window_size=6), zoo)
    cfg = _config(tiny_dataset, tmp_path, window_size=3)
    wrapped = torch.nn.DataParallel(model)
    assert not hasattr(wrapped, "config")
    batch = {"full_tokens": torch.stack([zoo.splits["train"][i]["tokens"] for i in range(4)])}
    window_lengths = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: window_lengths.append(kwargs["tokens"].shape[1]), with_kwargs=True
    )
    direct = train_step(model, batch, cfg, zoo.layout, None, step_generator(1, 0, 0), augment=False)
    through_wrapper = train_step(wrapped, batch, cfg, zoo.layout, None, step_generator(1, 0, 0), augment=False)
    assert zoo.layout.num_tokens > 6 and window_lengths == [6, 6]
    assert torch.equal(direct["loss"], through_wrapper["loss"])


def test_default_loaders_yield_rows_and_reading_windows_matches_cutting_them(tiny_dataset, tmp_path):
    zoo = load_zoo_dataset(tiny_dataset)
    cfg = _config(tiny_dataset, tmp_path, window_size=5)
    train_loader, val_loader = pretrain_loop.get_dataloaders(cfg, zoo)
    batch = next(iter(train_loader))
    assert set(batch) == {"rows"} and batch["rows"].shape == (cfg.batch_size,)
    store = pretrain_loop.token_store(train_loader)
    assert store.num_rows == len(zoo.splits["train"]) and pretrain_loop.token_store(val_loader) is not None

    model = pretrain_loop.load_or_build_model(cfg, zoo)
    permuter = build_permuter(zoo)
    full = {"full_tokens": torch.stack([zoo.splits["train"][int(i)]["tokens"] for i in batch["rows"]])}
    for augment in (True, False):
        read = train_step(model, batch, cfg, zoo.layout, permuter, step_generator(2, 3, 0), augment, store=store)
        cut = train_step(model, full, cfg, zoo.layout, permuter, step_generator(2, 3, 0), augment)
        for key in cut:
            assert torch.equal(read[key], cut[key]), key
    with pytest.raises(ValueError, match="needs the split's token `store`"):
        train_step(model, batch, cfg, zoo.layout, permuter, step_generator(2, 3, 0))


def test_pretraining_never_reads_whole_checkpoints(tiny_dataset, tmp_path):
    from sane_hf.data.windows import ArrowTokenStore

    def refuse(self, rows):
        raise AssertionError("pretraining read whole checkpoints")

    with mock.patch.object(ArrowTokenStore, "rows", refuse):
        output = pretrain(_config(tiny_dataset, tmp_path / "run", window_size=5, max_steps=3))
    assert read_trainer_state(output)["optimizer_steps"] == 3


def test_pretraining_learns_and_saves_a_loadable_model(tiny_dataset, tmp_path):
    from transformers import AutoFeatureExtractor, AutoModel

    output = pretrain(_config(tiny_dataset, tmp_path / "run", epochs=40, d_model=32, latent_dim=8, lr=1e-2))
    state = read_trainer_state(output)
    train_losses = [h["train/loss_recon"] for h in state["log_history"] if "train/loss_recon" in h]
    assert len(train_losses) >= 4
    assert train_losses[-1] < 0.7 * train_losses[0]
    assert any("val/loss" in h for h in state["log_history"])
    assert state["ranks_in_sync"] is True
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processing_sane.py",
        "pipeline_sane.py",
        "train_config.json",
    ):
        assert (output / name).is_file(), name
    pipelines = json.loads((output / "config.json").read_text())["custom_pipelines"]
    assert pipelines["feature-extraction"]["impl"] == "pipeline_sane.SaneEmbeddingPipeline"  # the card's pipeline_tag
    AutoModel.from_pretrained(output)
    zoo = load_zoo_dataset(tiny_dataset)
    processor = AutoFeatureExtractor.from_pretrained(output)  # the weight processor of the zoo
    assert processor.layout == zoo.layout and processor.normalization == zoo.normalization
    assert json.loads((output / "train_config.json").read_text())["lr"] == 1e-2


def test_same_seed_same_model(tiny_dataset, tmp_path):
    """Also: `retain_freed_memory` (on by default) is applied by a run that asks for it only, and changes no weight."""
    retain = mock.patch.object(pretrain_loop, "retain_freed_memory", wraps=pretrain_loop.retain_freed_memory)
    with retain as retain_calls:
        first = pretrain(_config(tiny_dataset, tmp_path / "a", max_steps=6))
        assert retain_calls.call_count == 1
        second = pretrain(_config(tiny_dataset, tmp_path / "b", max_steps=6, retain_freed_memory=False))
        assert retain_calls.call_count == 1
    for key, value in _weights(first).items():
        assert torch.equal(value, _weights(second)[key]), key


def test_kill_and_resume_reproduces_an_uninterrupted_run(tiny_dataset, tmp_path, killed_after_checkpoint):
    cfg = dict(max_steps=14, save_steps=4, epochs=10)
    reference = pretrain(_config(tiny_dataset, tmp_path / "reference", **cfg))

    interrupted = tmp_path / "interrupted"
    with killed_after_checkpoint(8), pytest.raises(KeyboardInterrupt):
        pretrain(_config(tiny_dataset, interrupted, **cfg))
    assert not (interrupted / "model.safetensors").exists()
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == ["step_4", "step_8"]

    # A run restarted from scratch ends with the same weights too (it is deterministic): what shows a resume is
    # where it starts and how many steps it runs.
    spy = _TrainStepSpy()
    with spy.patch():
        resumed = pretrain(_config(tiny_dataset, interrupted, resume_from_checkpoint="latest", **cfg))
    assert len(spy.models) == 14 - 8
    state = read_trainer_state(resumed)
    assert (state["resumed_from_step"], state["steps_this_run"], state["optimizer_steps"]) == (8, 6, 14)
    assert (read_trainer_state(reference)["resumed_from_step"], read_trainer_state(reference)["steps_this_run"]) == (
        None,
        14,
    )
    for key, value in _weights(reference).items():
        assert torch.equal(value, _weights(resumed)[key]), key


def test_resume_without_a_checkpoint_fails_clearly(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint to resume from"):
        pretrain(_config(tiny_dataset, tmp_path / "none", resume_from_checkpoint="latest"))


@pytest.mark.parametrize("streaming", [False, True])
def test_two_process_cpu_ddp_keeps_ranks_identical(tiny_dataset, tmp_path, launch_two_processes, streaming):
    """Also streamed: each process reads its own half of the stream, and both step together (the same batch count)."""
    output = tmp_path / "ddp"
    options = ["--dataset", str(tiny_dataset), "--output_dir", str(output), "--d_model", "16", "--n_heads", "2"]
    options += ["--n_layers", "1", "--latent_dim", "4", "--window_size", "8", "--batch_size", "4", "--max_steps", "6"]
    options += ["--epochs", "3", "--seed", "3", "--logging_steps", "2"]
    if streaming:
        options += ["--streaming", "true", "--shuffle_buffer", "0", "--save_steps", "3"]
    launch_two_processes("scripts/pretrain.py", *options, cwd=tmp_path)
    state = read_trainer_state(output)
    assert state["num_processes"] == 2
    assert state["ranks_in_sync"] is True
    assert len(state["parameter_checksums"]) == 2
    assert state["optimizer_steps"] == 6
    if streaming:  # every process's stream position, in each step checkpoint
        for step in (3, 6):
            positions = [
                json.loads((output / f"checkpoints/step_{step}/stream_state_{rank}.json").read_text())
                for rank in (0, 1)
            ]
            assert [position["rows"] for position in positions] == [step * 4, step * 4]


def test_init_from_and_push_to_hub(tiny_dataset, tmp_path):
    first = pretrain(_config(tiny_dataset, tmp_path / "first", max_steps=3))
    uploads = []

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()), ignore_patterns))
        return "https://huggingface.co/org/sane-test/commit/0"

    spy = _TrainStepSpy()
    with (
        mock.patch("huggingface_hub.HfApi.create_repo") as create_repo,
        mock.patch("huggingface_hub.HfApi.upload_folder", fake_upload_folder),
        spy.patch(),
    ):
        second = pretrain(
            _config(tiny_dataset, tmp_path / "second", max_steps=2, init_from=str(first), push_to_hub="org/sane-test")
        )
    create_repo.assert_called_once()
    assert create_repo.call_args.args[0] == "org/sane-test"
    ((repo_id, files, ignored),) = uploads
    assert repo_id == "org/sane-test" and "checkpoints/*" in ignored
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "train_config.json"} <= set(files)
    # The second run starts from the first run's weights exactly (a fresh model would differ), then trains.
    before, after = _weights(first), _weights(second)
    assert sorted(spy.first_weights) == sorted(before)
    assert all(torch.equal(spy.first_weights[k], before[k]) for k in before)
    assert sum((before[k] - after[k]).abs().sum() for k in before) > 0


def test_init_from_with_another_token_size_fails(tiny_dataset, tmp_path):
    from sane_hf import SaneConfig, SaneModel

    other = SaneModel(
        SaneConfig(
            token_size=5, d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8, max_positions=[64, 8, 16]
        )
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="token_size 5"):
        pretrain(_config(tiny_dataset, tmp_path / "run", init_from=str(tmp_path / "other")))


# ------------------------------------------------------------------------------------------ options the README lists
def _num_train_rows(dataset: Path) -> int:
    return load_zoo_dataset(dataset).splits["train"].num_rows


def test_gradient_accumulation_runs_that_many_batches_per_optimizer_step(tiny_dataset, tmp_path):
    spy = _TrainStepSpy()
    with spy.patch():
        output = pretrain(_config(tiny_dataset, tmp_path / "run", max_steps=3, gradient_accumulation_steps=2))
    state = read_trainer_state(output)
    assert len(spy.models) == 6 and (state["optimizer_steps"], state["micro_batches"]) == (3, 6)


def test_windows_per_checkpoint_repeats_every_checkpoint_in_an_epoch(tiny_dataset, tmp_path):
    spy = _TrainStepSpy()
    with spy.patch():
        output = pretrain(_config(tiny_dataset, tmp_path / "run", epochs=1, windows_per_checkpoint=3, batch_size=4))
    num_rows = _num_train_rows(tiny_dataset)
    assert read_trainer_state(output)["optimizer_steps"] == (3 * num_rows) // 4  # full batches only
    seen = torch.bincount(torch.cat(spy.rows), minlength=num_rows)
    assert int(seen.max()) == 3 and int(seen.sum()) == 4 * ((3 * num_rows) // 4)


def test_max_grad_norm_clips_the_update(tiny_dataset, tmp_path):
    """AdamW divides by sqrt(v) + 1e-8: with gradients clipped to a norm of 1e-12 the first steps barely move the
    weights, against about `lr` per weight unclipped."""

    def distance_moved(**overrides) -> float:
        spy = _TrainStepSpy()
        with spy.patch():
            output = pretrain(_config(tiny_dataset, tmp_path / str(len(overrides)), max_steps=2, **overrides))
        after = _weights(output)
        return sum((after[k] - spy.first_weights[k]).abs().sum().item() for k in after)

    assert distance_moved(max_grad_norm=1e-12) < 1e-3 * distance_moved()


def test_save_total_limit_keeps_only_the_latest_step_checkpoints(tiny_dataset, tmp_path):
    for limit, expected in ((1, ["step_6"]), (None, ["step_2", "step_4", "step_6"])):
        output = pretrain(
            _config(tiny_dataset, tmp_path / str(limit), max_steps=6, save_steps=2, save_total_limit=limit)
        )
        assert sorted(p.name for p in (output / "checkpoints").iterdir()) == expected


def test_erase_probability_erases_tokens_of_the_views(tiny_dataset, tmp_path):
    """With erasing certain, the views the model sees differ from those without erasing, for the same draws."""
    zoo = load_zoo_dataset(tiny_dataset)
    model = pretrain_loop.load_or_build_model(_config(tiny_dataset, tmp_path), zoo)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["tokens"]), with_kwargs=True)
    batch = {"full_tokens": torch.stack([zoo.splits["train"][i]["tokens"] for i in range(8)])}
    for probability in (0.0, 1.0):
        cfg = _config(
            tiny_dataset, tmp_path, erase_probability=probability, noise_multiplicative=0.0, noise_additive=0.0
        )
        train_step(model, batch, cfg, zoo.layout, None, step_generator(1, 0, 0))
    plain, erased = seen
    assert plain.shape == erased.shape and not torch.equal(plain, erased)
    assert (erased == 0).sum() > (plain == 0).sum()  # erased entries are zero


def test_mixed_precision_runs_the_model_in_bf16(tiny_dataset, tmp_path):
    dtypes = set()

    def record_dtype(module, args, output):
        dtypes.add(output.dtype)

    real_load = pretrain_loop.load_or_build_model

    def load_with_hook(cfg, zoo):
        model = real_load(cfg, zoo)
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(record_dtype)
        return model

    from accelerate.state import AcceleratorState

    # Accelerate keeps its state (mixed precision included) for the process: reset it around this run.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with mock.patch.object(pretrain_loop, "load_or_build_model", load_with_hook):
            pretrain(_config(tiny_dataset, tmp_path / "bf16", max_steps=1, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert dtypes == {torch.bfloat16}


def test_compile_trains_the_compiled_model(tiny_dataset, tmp_path):
    """`--compile` hands `torch.compile`'s module to the loop (compiled here with the cheap eager backend)."""
    real_compile = torch.compile
    spy = _TrainStepSpy()
    with mock.patch.object(torch, "compile", lambda model: real_compile(model, backend="eager")), spy.patch():
        output = pretrain(_config(tiny_dataset, tmp_path / "compiled", max_steps=2, compile=True))
    assert spy.models and all(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in spy.models)
    assert (output / "model.safetensors").is_file() and not any(k.startswith("_orig_mod") for k in _weights(output))


def test_log_with_sends_the_config_and_every_logged_line_to_the_tracker(tiny_dataset, tmp_path):
    """`--log_with tensorboard`, with accelerate's TensorBoard tracker replaced by a recorder (tensorboard is not a
    dependency): the run's config is stored once and each logging step reaches the tracker."""
    from accelerate import tracking

    records = []

    class RecordingTracker(tracking.GeneralTracker):
        name = "tensorboard"
        requires_logging_directory = True

        def __init__(self, run_name, logging_dir=None, **kwargs):
            super().__init__()
            records.append(("init", run_name, str(logging_dir)))

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            records.append(("config", values))

        def log(self, values, step=None, **kwargs):
            records.append(("log", step, values))

    available = [*tracking.get_available_trackers(), tracking.LoggerType.TENSORBOARD]
    with (
        mock.patch.dict(tracking.LOGGER_TYPE_TO_CLASS, {"tensorboard": RecordingTracker}),
        mock.patch("accelerate.tracking.get_available_trackers", return_value=available),
    ):
        output = pretrain(
            _config(tiny_dataset, tmp_path / "run", max_steps=10, logging_steps=5, log_with="tensorboard")
        )
    assert records[0] == ("init", "sane_pretrain", str(output))
    assert records[1][0] == "config" and records[1][1]["lr"] == 3e-3 and records[1][1]["log_with"] == "tensorboard"
    train_steps = [step for kind, step, *values in records[2:] if kind == "log" and "train/loss" in values[0]]
    assert train_steps == [5, 10]


def test_weights_that_diverge_without_a_nan_loss_are_never_saved(tiny_dataset, tmp_path):
    """The last resort behind the loss check (an update that diverges on the last step, fp16 runs): the weights are
    checked before saving, and a NaN model is not saved."""
    with mock.patch.object(pretrain_loop, "_check_finite_loss", lambda *args: None):
        with pytest.raises(ValueError, match=r"not saved: the model after step 4: weight '.*' holds \d+ NaN/Inf"):
            pretrain(_config(tiny_dataset, tmp_path / "sane", max_steps=4, lr=1e12))
    assert not (tmp_path / "sane" / "model.safetensors").exists()


def test_an_interrupted_step_checkpoint_leaves_no_temporary_folder(tiny_dataset, tmp_path):
    from accelerate import Accelerator

    real_save_state = Accelerator.save_state

    def save_then_interrupt(self, *args, **kwargs):
        real_save_state(self, *args, **kwargs)
        raise KeyboardInterrupt("Ctrl-C while saving the step checkpoint")

    with mock.patch.object(Accelerator, "save_state", save_then_interrupt), pytest.raises(KeyboardInterrupt):
        pretrain(_config(tiny_dataset, tmp_path / "sane", max_steps=4, save_steps=2))
    assert list((tmp_path / "sane" / "checkpoints").iterdir()) == []


def test_resume_accepts_changed_run_control_options(tiny_dataset, tmp_path):
    """Options that steer a run but not what it trains (logging, saving, threads) may change on resume."""
    output = pretrain(_config(tiny_dataset, tmp_path / "sane", max_steps=4, save_steps=2))
    pretrain(
        _config(
            tiny_dataset,
            output,
            max_steps=4,
            save_steps=1,
            save_total_limit=None,
            logging_steps=1,
            num_threads=2,
            retain_freed_memory=False,
            resume_from_checkpoint="auto",
        )
    )
    assert read_trainer_state(output)["resumed_from_step"] == 4
