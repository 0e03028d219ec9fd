"""Generation over the processes of a launch (docs/architecture.md#work-over-processes): two CPU processes write the
files one process writes."""

import pytest
import torch

from sane_hf.cli import main_evaluate, main_generate
from sane_hf.models.sane import SaneConfig, SaneModel
from sane_hf.utils.processes import Processes


def _tiny_sane(**overrides) -> SaneModel:
    values = dict(token_size=6, d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8, halo_size=2)
    values.update(overrides)
    torch.manual_seed(0)
    return SaneModel(SaneConfig(**values)).eval()


@pytest.mark.parametrize("seq_len", [5, 23], ids=["one-snippet", "haloed-windows"])
def test_decoding_a_share_of_the_sequences_runs_passes_of_the_full_decode(seq_len):
    """`sequences=(start, stop)` runs only forward passes that the full decode runs (5 snippets per pass: the shares
    start and stop inside passes, whose other snippets are computed and dropped), so their rows equal the full
    decode's exactly whatever the kernels do with a batch; every pass is recorded (inputs and outputs)."""
    sane = _tiny_sane()
    latents = torch.randn(7, seq_len, 4, generator=torch.Generator().manual_seed(1))
    positions = torch.stack([torch.arange(seq_len), torch.zeros(seq_len, dtype=torch.long), torch.arange(seq_len)], 1)
    decode, passes = sane._decode, []

    def recording_decode(inputs, *args):
        passes.append(inputs.clone())
        return decode(inputs, *args)

    sane._decode = recording_decode
    full = sane.haloed_decode(latents, positions, batch_size=5)
    full_passes = list(passes)
    for start, stop in [(0, 7), (0, 4), (4, 7), (2, 5), (6, 7)]:
        passes.clear()
        part = sane.haloed_decode(latents, positions, batch_size=5, sequences=(start, stop))
        assert part.shape == (stop - start, seq_len, 6)
        assert torch.equal(part, full[start:stop]), (start, stop)
        assert passes and all(any(torch.equal(p, q) for q in full_passes) for p in passes), (start, stop)
    with pytest.raises(ValueError, match=r"`sequences` must be \(start, stop\) with 0 <= start < stop <= 7"):
        sane.haloed_decode(latents, positions, sequences=(3, 9))


def test_shares_cover_every_index_once_in_order():
    """Contiguous shares, the first `total % count` one longer, together exactly `start .. start + total - 1`."""
    for total, count in [(0, 2), (1, 2), (5, 2), (6, 3), (7, 3)]:
        shares = [Processes(index, count).share(total, start=10) for index in range(count)]
        assert [i for share in shares for i in share] == list(range(10, 10 + total))
        assert [len(share) for share in shares] == [total // count + (i < total % count) for i in range(count)]


def test_generation_over_two_processes_writes_the_files_of_one(cnn_setup, once_and_on_two_processes, folder_digests):
    """`scripts/generate.py` under torchrun (2 CPU processes): subsampling (candidates decoded and scored in shares
    whose boundaries fall inside decoding passes), the selected noise control and one fine-tuning epoch of every
    population; every file (weights, cards, generation.json and evaluation.json without their wall times, the plot)
    is the one a single process writes."""
    config = (
        f"model: {cnn_setup['sane']}\ndataset: {cnn_setup['dataset']}\nsampler: subsample\nn: 3\nnum_candidates: 5\n"
        "num_anchors: 3\ndecode_batch_size: 2\nevaluate: true\nfinetune_epochs: 1\nnum_scratch: 2\nseed: 4\n"
        "num_threads: 1\n"
    )
    one, two, stderr = once_and_on_two_processes("scripts/generate.py", config, main_generate)
    assert "Generated 3 subsample networks" not in stderr  # the summary goes to stdout, from the main process only
    digests = folder_digests(one, skip=("evaluation.md",))
    assert len([name for name in digests if name.endswith(".safetensors")]) == 3 + 3  # model_00i/ and anchors/
    assert {"generation.json", "evaluation.json", "evaluation.png", "README.md"} <= set(digests)
    assert folder_digests(two, skip=("evaluation.md",)) == digests


def test_evaluation_of_saved_models_over_two_processes_writes_the_report_of_one(
    cnn_setup, tmp_path, once_and_on_two_processes, folder_digests
):
    """`scripts/evaluate.py` under torchrun: each process fine-tunes its share of every population (3 generated
    networks, their anchors, noise controls, 3 scratch networks) and the main process alone writes the report, the
    one a single process writes (evaluation.json without wall times, the plot)."""
    generated = tmp_path / "generated"
    main_generate(
        ["--model", str(cnn_setup["sane"]), "--dataset", str(cnn_setup["dataset"]), "--sampler", "kde", "--n", "3"]
        + ["--num_anchors", "3", "--evaluate", "false", "--num_threads", "1", "--output_dir", str(generated)]
    )
    config = f"models: {generated}\nfinetune_epochs: 1\nnum_scratch: 3\nnum_threads: 1\n"
    one, two, _ = once_and_on_two_processes("scripts/evaluate.py", config, main_evaluate)
    digests = folder_digests(one, skip=("evaluation.md",))
    assert set(digests) == {"evaluation.json", "evaluation.png"}
    assert folder_digests(two, skip=("evaluation.md",)) == digests
