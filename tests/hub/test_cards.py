"""The cards of the three published artifacts, validated offline: YAML front matter parsed by `huggingface_hub`
(`ModelCard`/`DatasetCard` `.data`, `model_index_to_eval_results`) and every field `sane_hf` emits checked."""

import json
import math
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results

from sane_hf.data.hub_dataset import load_zoo_meta
from sane_hf.hub.sane_cards import PROBE_RESULTS_NAME, build_sane_card, is_sane_card, write_sane_card, zoo_summary
from sane_hf.probing.report import main_records


SANE_REPO = "sane-test-org/sane-cnn-digits-tiny"  # the repo ids of tests/hub/conftest.py
ZOO_REPO = "sane-test-org/sane-zoo-cnn-digits-tiny"
GENERATED_REPO = "sane-test-org/sane-generated-cnn-digits-tiny"
MEMBER_REPOS = [f"sane-test-org/sane-zoo-member-{index}" for index in range(2)]
VIT_GENERATED_REPO = "sane-test-org/sane-generated-vit-digits-tiny"


def front_matter(text: str) -> dict:
    """The raw YAML metadata of a card (what the Hub parses), read with the Hub client's own block pattern."""
    match = REGEX_YAML_BLOCK.search(text)
    assert match is not None, "the card has no YAML front matter"
    data = yaml.safe_load(match.group(2))
    assert isinstance(data, dict)
    return data


def test_the_captured_repo_ids(hub_artifacts):
    assert (hub_artifacts.sane_repo, hub_artifacts.zoo_repo) == (SANE_REPO, ZOO_REPO)
    assert hub_artifacts.generated_repo == GENERATED_REPO
    assert set(hub_artifacts.recorder.repos) == {
        ("model", SANE_REPO),
        ("dataset", ZOO_REPO),
        ("model", GENERATED_REPO),
        *(("model", repo_id) for repo_id in MEMBER_REPOS),
        ("model", VIT_GENERATED_REPO),
    }


def test_sane_card_metadata_and_model_index(hub_artifacts):
    text = (hub_artifacts.sane / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)  # parses and validates the metadata (model-index included); raises on bad YAML
    data = card.data
    assert data.license == "mit"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "feature-extraction"
    assert {"sane", "weight-space-learning", "cnn_s"} <= set(data.tags)
    assert data.datasets is None  # trained on a local folder: no Hub dataset id to name
    assert data.base_model is None
    assert data.model_name == "SANE (cnn_s zoo)"

    # The model-index holds exactly the SANE rows of the probing run's main comparison, on the test split.
    results = json.loads((hub_artifacts.predict_dir / "results.json").read_text())
    expected = {
        (prop, method): round(record["scores"]["test"], 4)
        for prop, methods in main_records(results).items()
        for method, record in methods.items()
        if method.startswith("SANE") and record["scores"].get("test") is not None
    }
    assert set(expected) == {("test_acc", "SANE mean"), ("optimizer", "SANE mean")}
    name, eval_results = model_index_to_eval_results(front_matter(text)["model-index"])
    assert name == data.model_name
    found = {}
    for result in eval_results:
        prop = result.metric_name.split(" of ", 1)[1].split(" (", 1)[0]
        found[(prop, "SANE mean")] = result.metric_value
        assert result.dataset_split == "test" and result.dataset_type == "zoo_ds"
        assert (result.metric_type, result.task_type) in {
            ("r_squared", "tabular-regression"),
            ("accuracy", "tabular-classification"),
        }
    assert found == expected
    assert all(math.isfinite(v) for v in found.values())

    # The text: usage by repo id, the training zoo and run, the probe table, limitations, citation.
    body = card.text
    assert f'AutoModel.from_pretrained("{SANE_REPO}")' in body
    assert f'AutoModel.from_pretrained("{SANE_REPO}", trust_remote_code=True)' in body
    assert "`cnn_s`" in body and "8 networks" in body and "`digits`" in body
    assert "| optimizer steps / epochs | 4 /" in body
    assert "| test_acc | R² |" in body and "## Limitations" in body and "2406.09997" in body
    assert "[More Information Needed]" not in body


def test_sane_card_is_written_by_pretrain_and_rebuilt_from_the_folder(hub_artifacts, tmp_path):
    # pretrain() wrote the card before any probing (no model-index yet) and uploaded it.
    assert "README.md" in hub_artifacts.pretrain_upload
    assert PROBE_RESULTS_NAME not in hub_artifacts.pretrain_upload
    assert PROBE_RESULTS_NAME in hub_artifacts.recorder.repos[("model", SANE_REPO)]["files"]
    # Rebuilt from the folder alone (another repo id): same metadata, new snippets.
    card = build_sane_card(hub_artifacts.sane_dir, repo_id="someone/else")
    pushed = ModelCard.load(hub_artifacts.sane / "README.md")
    assert card.data.to_dict() == pushed.data.to_dict()
    assert 'from_pretrained("someone/else")' in card.text
    # A Hub dataset id and a Hub base model go into the metadata; local paths do not.
    folder = tmp_path / "sane"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "train_config.json", "trainer_state.json"):
        (folder / name).write_bytes((hub_artifacts.sane_dir / name).read_bytes())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["dataset"]["source"] == str(hub_artifacts.dataset_dir) and state["dataset"]["hub_id"] is None
    info, _, _ = load_zoo_meta(hub_artifacts.dataset_dir)
    state["dataset"] = zoo_summary(info, ZOO_REPO)  # as if pretrained on the pushed dataset, by id
    (folder / "trainer_state.json").write_text(json.dumps(state))
    train_config = json.loads((folder / "train_config.json").read_text())
    train_config["init_from"] = "org/sane-base"
    (folder / "train_config.json").write_text(json.dumps(train_config))
    assert write_sane_card(folder) == folder / "README.md"
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets == [ZOO_REPO] and card.data.base_model == "org/sane-base"
    assert card.data.eval_results is None and "Not evaluated yet" in card.text
    assert f'load_zoo_dataset("{ZOO_REPO}")' in card.text


def test_a_hand_written_card_is_left_alone(hub_artifacts, tmp_path):
    folder = tmp_path / "sane"
    folder.mkdir()
    (folder / "config.json").write_bytes((hub_artifacts.sane_dir / "config.json").read_bytes())
    (folder / "README.md").write_text("# My own words\n")
    assert write_sane_card(folder) is None
    assert (folder / "README.md").read_text() == "# My own words\n"
    assert not is_sane_card(ModelCard.load(folder / "README.md"))
    assert write_sane_card(folder, force=True) == folder / "README.md"
    assert is_sane_card(ModelCard.load(folder / "README.md"))


def test_sane_card_bad_input_is_named(tmp_path, hub_artifacts):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_sane_card(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type is 'bert', expected 'sane'"):
        build_sane_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_sane_card(hub_artifacts.sane_dir, probe_results=tmp_path / "missing.json")


def test_dataset_card_metadata(hub_artifacts):
    text = (hub_artifacts.zoo / "README.md").read_text(encoding="utf-8")
    card = DatasetCard(text)
    data = card.data
    assert data.license == "cc-by-4.0"
    assert {"sane", "weight-space-learning", "model-zoo"} <= set(data.tags)
    assert data.size_categories == "n<1K"
    info = json.loads((hub_artifacts.zoo / "meta" / "info.json").read_text())
    splits = [name for name, split in info["splits"].items() if split["num_checkpoints"] > 0]
    (config,) = front_matter(text)["configs"]
    assert config["config_name"] == "default"
    assert config["data_files"] == [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]
    body = card.text
    assert f'load_dataset("{ZOO_REPO}")' in body and f'load_zoo_dataset("{ZOO_REPO}")' in body
    assert "`cnn_s`" in body and "## Splits" in body and "| `test_acc` |" in body and "2406.09997" in body
    # Generating factors, read from the shards: one row per hyper-parameter, model counts adding up to the zoo.
    factors = body.split("## Generating factors", 1)[1].split("##", 1)[0]
    optimizer_row = next(line for line in factors.splitlines() if line.startswith("| `optimizer` |"))
    counts = [int(part.split("(")[1].split(")")[0]) for part in optimizer_row.split("|")[2].split(",")]
    assert sum(counts) == sum(len(split["model_ids"]) for split in info["splits"].values()) == 8
    assert "| `test_acc` |" not in factors and "[More Information Needed]" not in body
    tags = hub_artifacts.recorder.repos[("dataset", ZOO_REPO)]["tags"]
    assert tags == ["sane-zoo-v2"]  # the format version 2 dataset tag (names the validation split `validation`)


def test_generated_model_cards_metadata(hub_artifacts):
    repo_card = ModelCard.load(hub_artifacts.generated / "README.md")
    for card in (repo_card, ModelCard.load(hub_artifacts.generated / "model_000" / "README.md")):
        data = card.data
        assert data.library_name == "sane_hf"
        assert data.base_model == SANE_REPO
        assert data.pipeline_tag == "image-classification"
        assert {"sane", "generated-weights", "cnn_s", "sampler-kde"} <= set(data.tags)
        assert data.get("sane_generation")["sampler"] == "kde"
        assert "2406.09997" in card.text
    member = ModelCard.load(hub_artifacts.generated / "model_000" / "README.md")
    assert f'load_zoo_model("{GENERATED_REPO}", subfolder="model_000")' in member.text
    raw = front_matter((hub_artifacts.generated / "model_000" / "README.md").read_text())
    name, results = model_index_to_eval_results(raw["model-index"])
    assert name == "SANE-generated cnn_s #000"
    assert [r.metric_name for r in results] == ["zero-shot test accuracy"]
    assert 0.0 <= results[0].metric_value <= 1.0


@pytest.mark.parametrize(
    "name", ["sane-cnn-digits.md", "sane-zoo-cnn-digits.md", "sane-generated-repo.md", "sane-generated-model_000.md"]
)
def test_the_rendered_examples_in_model_cards_are_valid_cards(name):
    path = Path(__file__).resolve().parents[2] / "model_cards" / "examples" / name
    card = (DatasetCard if "zoo" in name else ModelCard).load(path)
    assert "sane" in card.data.tags and "2406.09997" in card.text
    if "zoo" not in name:
        _, results = model_index_to_eval_results(front_matter(path.read_text(encoding="utf-8"))["model-index"])
        assert results and all(math.isfinite(r.metric_value) for r in results)
