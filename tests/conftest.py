"""Test-wide set-up: offline Hub and a throwaway HF cache, set before anything imports huggingface_hub; and the
tiny synthetic zoos on disk (no training) that tests in several folders build: our own format, the original ray-tune
layout, and model folders (the `zoo_tools` fixture)."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if "HF_HOME" not in os.environ:
    # A private, throw-away Hub cache for the run (removed at exit, so repeated runs leave nothing in /tmp).
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sane_hf_test_hf_home_")
    _owner_pid = os.getpid()  # forked test children exit too; only the creating process removes it

    @atexit.register
    def _remove_test_hf_home(path: str = os.environ["HF_HOME"]) -> None:
        if os.getpid() == _owner_pid:
            shutil.rmtree(path, ignore_errors=True)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib  # noqa: E402  (after the environment above)
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sane_hf.zoo_models import build_zoo_model  # noqa: E402


CNN_KWARGS = {"input_size": 8, "padding": "auto", "in_channels": 1}
OPTIMIZERS = ("adam", "sgd")


def model_state_dict(seed: int, architecture: str = "cnn_s", **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_zoo_model(architecture, **(kwargs or CNN_KWARGS))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def epoch_state_dict(base: dict[str, torch.Tensor], seed: int, epoch: int) -> dict[str, torch.Tensor]:
    """The base weights drifting with the epoch (deterministic)."""
    g = torch.Generator().manual_seed(1000 * seed + epoch)
    return {k: v + 0.05 * epoch * torch.randn(v.shape, generator=g) for k, v in base.items()}


def metrics_line(index: int, epoch: int) -> dict:
    test_acc = round(0.1 + 0.08 * epoch + 0.01 * index, 6)
    train_acc = round(test_acc + 0.02 * epoch, 6)
    return {
        "epoch": epoch,
        "train_loss": round(2.3 - 0.3 * epoch, 6),
        "train_acc": train_acc,
        "val_loss": round(2.4 - 0.25 * epoch, 6),
        "val_acc": round(test_acc - 0.005, 6),
        "test_loss": round(2.4 - 0.2 * epoch, 6),
        "test_acc": test_acc,
        "ggap": round(train_acc - test_acc, 6),
    }


def write_sane_hf_zoo(
    root: Path,
    num_models: int = 8,
    num_epochs: int = 3,
    *,
    unfinished: tuple[int, ...] = (),
    architecture: str = "cnn_s",
    model_kwargs: dict | None = None,
    checksums: bool = False,
) -> Path:
    """A zoo in our own format: `num_models` models with epochs 0..num_epochs (epoch 0 = initialization).

    Finished models get a `DONE` record as `sane-make-zoo` writes it; with `checksums`, it records each checkpoint's
    size and sha256 (as zoos written since checksums exist), else not (as older zoos, whose files tests may edit).

    As in real zoos, `model_kwargs` carry each model's dropout (for `cnn_s`, odd models have Dropout modules, which
    shifts their `module_list` key indices).
    """
    base_kwargs = dict(model_kwargs or CNN_KWARGS)
    root.mkdir(parents=True, exist_ok=True)
    task = {"name": "digits", "description": "sklearn digits, 8x8 grayscale, 10 classes"}
    config = {"format": "sane_hf-zoo", "format_version": 1, "task": task, "architecture": architecture}
    (root / "zoo_config.json").write_text(json.dumps(config))
    for index in range(num_models):
        model_id = f"model_{index:04d}"
        folder = root / "models" / model_id
        dropout = 0.1 * (index % 2)
        model_kwargs = {**base_kwargs, "dropout": dropout} if architecture in ("cnn_s", "mlp") else base_kwargs
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        params = {
            "model_id": model_id,
            "index": index,
            "architecture": architecture,
            "model_kwargs": model_kwargs,
            "task": task,
            "seed": index,
            "lr": 10 ** -(2 + index % 3),
            "weight_decay": 0.0 if index % 2 else 1e-4,
            "optimizer": OPTIMIZERS[index % 2],
            "init": "kaiming_uniform",
            "activation": "relu",
            "dropout": dropout,
            "batch_size": 32,
            "epochs": num_epochs,
        }
        (folder / "params.json").write_text(json.dumps(params))
        base = model_state_dict(index, architecture, **model_kwargs)
        lines, recorded = [], {}
        for epoch in range(num_epochs + 1):
            path = folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"
            save_file(epoch_state_dict(base, index, epoch), path)
            recorded[path.name] = {
                "size": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
            lines.append(json.dumps(metrics_line(index, epoch)))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        if index not in unfinished:
            done = {"format": "sane_hf-zoo", "format_version": 1, "model_id": model_id, "index": index}
            done |= {"epochs": num_epochs, "num_checkpoints": num_epochs + 1}
            done["final_metrics"] = metrics_line(index, num_epochs)
            (folder / "DONE").write_text(json.dumps(done | ({"checkpoints": recorded} if checksums else {})))
    return root


def write_modelzoo(root: Path, num_models: int = 4, num_epochs: int = 3, *, with_init: bool = True) -> Path:
    """A zoo in the original ray-tune layout (docs/zoo_dataset_format.md), `cnn_s` ("CNN") members on 28x28 inputs.

    With `with_init`, line 0 / `checkpoint_000000` is the initialization and `training_iteration` counts from 0
    (the zoo trainer's evaluation-only first step); without, both start at epoch 1.
    """
    root.mkdir(parents=True, exist_ok=True)
    first = 0 if with_init else 1
    for index in range(num_models):
        folder = root / f"NN_tune_trainable_{index:05d}_seed={index}"
        folder.mkdir()
        params = {
            "model::type": "CNN",
            "model::channels_in": 1,
            "model::o_dim": 10,
            "model::nlin": "tanh",
            "model::dropout": 0.0,
            "model::init_type": "kaiming_uniform",
            "optim::optimizer": "adam",
            "optim::lr": 1e-3 * (index + 1),
            "optim::wd": 0.0,
            "training::batchsize": 64,
            "training::epochs_train": num_epochs,
            "seed": index,
            "cuda": False,
            "dataset::dump": "/nonexistent/dataset.pt",
        }
        (folder / "params.json").write_text(json.dumps(params))
        base = model_state_dict(100 + index, "cnn_s", in_channels=1)
        lines = []
        for epoch in range(first, num_epochs + 1):
            # Half the models use zero-padded checkpoint folder names, half unpadded (both exist in the wild).
            name = f"checkpoint_{epoch:06d}" if index % 2 == 0 else f"checkpoint_{epoch}"
            (folder / name).mkdir()
            torch.save(epoch_state_dict(base, index, epoch), folder / name / "checkpoints")
            line = metrics_line(index, epoch)
            line.pop("epoch")
            line.pop("ggap")
            lines.append(
                json.dumps(
                    {
                        **line,
                        "training_iteration": epoch,
                        "time_this_iter_s": 0.5,
                        "hostname": "node",
                        "config": params,
                    }
                )
            )
        (folder / "result.json").write_text("\n".join(lines) + "\n")
    return root


def write_model_folder(folder: Path, seed: int, *, pickle: bool = False, properties: dict | None = None) -> Path:
    """One model folder as `ZooModel.save_pretrained` writes it (or with `pytorch_model.bin`)."""
    torch.manual_seed(seed)
    model = build_zoo_model("cnn_s", **CNN_KWARGS)
    model.save_pretrained(folder)
    if pickle:
        state_dict = {k: v.clone() for k, v in model.state_dict().items()}
        (folder / "model.safetensors").unlink()
        torch.save(state_dict, folder / "pytorch_model.bin")
    if properties is not None:
        (folder / "properties.json").write_text(json.dumps(properties))
    return folder


def copy_zoo(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


class CodeRunningPayload:
    """A pickle payload: unpickling it calls `open(marker, "w")`, i.e. runs code whose side effect is the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A `torch.save`d state_dict with a code-running object among its tensors (creates `marker` if unpickled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module_list.0.weight": torch.zeros(2, 2), "payload": CodeRunningPayload(marker)}, path)
    return path


def assert_no_output(output: Path) -> None:
    """Neither the dataset folder nor a temporary folder next to it exists."""
    assert not output.exists()
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert leftovers == []


@pytest.fixture
def run_without_sane_hf(tmp_path):
    """Run a Python script in a fresh, offline process where `import sane_hf` raises ImportError (no PYTHONPATH, an
    empty working folder, `sys.modules["sane_hf"] = None` before the script); returns its stdout, asserting exit 0."""

    def run(script: str) -> str:
        workdir = tmp_path / "cwd_without_sane_hf"
        workdir.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
        guard = 'import sys\nsys.modules["sane_hf"] = None\n'
        result = subprocess.run(
            [sys.executable, "-c", guard + script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


@pytest.fixture(scope="session")
def zoo_tools() -> SimpleNamespace:
    """The zoo writers above, for tests that build their own variants (conftest modules are not imported by name)."""
    return SimpleNamespace(
        write_sane_hf_zoo=write_sane_hf_zoo,
        write_modelzoo=write_modelzoo,
        write_model_folder=write_model_folder,
        copy_zoo=copy_zoo,
        model_state_dict=model_state_dict,
        epoch_state_dict=epoch_state_dict,
        metrics_line=metrics_line,
        assert_no_output=assert_no_output,
        write_malicious_checkpoint=write_malicious_checkpoint,
    )


@pytest.fixture(scope="session")
def launch_two_processes():
    """`launch(script, *args, cwd)`: run a script of this repository under `torchrun --nproc_per_node 2` (two CPU
    processes, a gloo group, one thread each) and return its stderr, asserting exit 0. On a timeout the launcher AND
    its workers are killed (a killed torchrun alone orphans them)."""
    import signal

    repo = Path(__file__).resolve().parents[1]

    def launch(script: str | Path, *args: str, cwd: Path) -> str:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += [str(repo / script), *map(str, args)]
        env = {
            **os.environ,
            "PYTHONPATH": str(repo),
            "ACCELERATE_USE_CPU": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            pytest.fail(f"The 2-process run of {script} timed out:\n{stderr[-3000:]}")
        assert process.returncode == 0, stderr[-3000:]
        return stderr

    return launch


def _without_timings(value):
    """A JSON value without wall times (`timings`, `seconds`, `*_seconds`), which differ between any two runs."""
    if isinstance(value, dict):
        return {
            key: _without_timings(item)
            for key, item in value.items()
            if key != "timings" and key != "seconds" and not key.endswith("_seconds")
        }
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


@pytest.fixture(scope="session")
def folder_digests():
    """`digests(folder)`: `{relative path: sha256}` of every file below `folder`; JSON files are hashed without
    their wall times (`timings`, `seconds`, `*_seconds`) and `skip` names files left out (e.g. a Markdown report
    with a seconds column). Two runs that wrote the same things give equal digests."""

    def digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
        result = {}
        for path in sorted(Path(folder).rglob("*")):
            name = path.relative_to(folder).as_posix()
            if not path.is_file() or name in skip:
                continue
            data = path.read_bytes()
            if path.suffix == ".json":
                data = json.dumps(_without_timings(json.loads(data)), sort_keys=True).encode()
            result[name] = hashlib.sha256(data).hexdigest()
        return result

    return digests


@pytest.fixture
def once_and_on_two_processes(tmp_path, monkeypatch, launch_two_processes):
    """`run(script, config_text, main)`: write `config_text` to a YAML file, run `main(["--config", file,
    "--output_dir", "out"])` (a `sane_hf.cli` entry point) in this process inside `tmp_path/one`, then `script` under
    torchrun (2 CPU processes) inside `tmp_path/two`; returns both output folders and the launch's stderr.

    Options go in a config file because the launchers parse abbreviations of their own options (`--n` would be taken
    for `--nnodes`); the output_dir is the same relative path in two working folders because run records name it."""

    def run(script: str, config_text: str, main) -> tuple[Path, Path, str]:
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        args = ["--config", str(config), "--output_dir", "out"]
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / "one")
        main(args)
        stderr = launch_two_processes(script, *args, cwd=tmp_path / "two")
        return tmp_path / "one" / "out", tmp_path / "two" / "out", stderr

    return run
