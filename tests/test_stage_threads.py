"""Every stage runs with its own `num_threads` and gives the caller's torch thread count back when it returns or fails
(a notebook or the quickstart calling one stage after another keeps its setting).

Each stage runs in its cheapest real form: a tiny build, conversion and pretraining that finish, and predict,
generate, evaluate and the quickstart on inputs that make them fail just after they took their thread count.
"""

from pathlib import Path

import pytest
import torch


CALLER_THREADS = 1
STAGE_THREADS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, zoo_tools):
    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo

    root = tmp_path_factory.mktemp("stage_threads")
    zoo = zoo_tools.write_sane_hf_zoo(root / "zoo", num_models=6, num_epochs=1)
    dataset = root / "zoo_ds"
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(dataset), token_size=16), show_progress=False)
    return {"zoo": zoo, "dataset": dataset}


def build_zoo_stage(tiny, out: Path) -> None:
    from sane_hf.data.zoo_builder import ZooConfig, build_zoo

    build_zoo(ZooConfig(output_dir=str(out), num_models=1, epochs=1, batch_size=200, num_threads=STAGE_THREADS))


def convert_stage(tiny, out: Path) -> None:
    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo

    config = ConvertConfig(zoo_dir=str(tiny["zoo"]), output_dir=str(out), token_size=16, num_threads=STAGE_THREADS)
    convert_zoo(config, show_progress=False)


def pretrain_stage(tiny, out: Path) -> None:
    from sane_hf.training.configs import PretrainConfig
    from sane_hf.training.loop import pretrain

    sizes = dict(d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8, batch_size=4)  # one tiny step
    pretrain(
        PretrainConfig(
            dataset=str(tiny["dataset"]), output_dir=str(out), max_steps=1, num_threads=STAGE_THREADS, **sizes
        )
    )


def predict_stage(tiny, out: Path) -> None:
    from sane_hf.probing.configs import PredictConfig
    from sane_hf.probing.predict import predict_properties

    config = PredictConfig(
        model=str(out / "no_such_sane"),
        dataset=str(out / "no_such_dataset"),
        output_dir=str(out / "predict"),
        num_threads=STAGE_THREADS,
    )
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        predict_properties(config)


def generate_stage(tiny, out: Path) -> None:
    from sane_hf.generation import GenerateConfig, generate

    out.mkdir()
    config = GenerateConfig(
        model=str(out), dataset=str(tiny["dataset"]), output_dir=str(out), num_threads=STAGE_THREADS
    )
    with pytest.raises(ValueError, match="is the input `model`"):
        generate(config)


def evaluate_stage(tiny, out: Path) -> None:
    from sane_hf.generation import EvaluateConfig, evaluate_models

    config = EvaluateConfig(models=str(out / "no_such_models"), num_threads=STAGE_THREADS)
    with pytest.raises(FileNotFoundError, match="not a folder of generated models"):
        evaluate_models(config)


def quickstart_stage(tiny, out: Path) -> None:
    from sane_hf.quickstart import QuickstartConfig, run_quickstart

    out.mkdir()
    (out / "zoo").write_text("a file where the zoo folder goes")
    with pytest.raises(FileExistsError):
        run_quickstart(QuickstartConfig(output_dir=str(out), preset="smoke", num_threads=STAGE_THREADS))


STAGES = [
    build_zoo_stage,
    convert_stage,
    pretrain_stage,
    predict_stage,
    generate_stage,
    evaluate_stage,
    quickstart_stage,
]


@pytest.mark.parametrize("stage", STAGES, ids=[stage.__name__ for stage in STAGES])
def test_stage_restores_the_callers_thread_count(tiny, tmp_path, stage):
    previous = torch.get_num_threads()
    torch.set_num_threads(CALLER_THREADS)
    try:
        stage(tiny, tmp_path / "out")
        assert torch.get_num_threads() == CALLER_THREADS
    finally:
        torch.set_num_threads(previous)
