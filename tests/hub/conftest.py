"""The published artifacts, made for real and "pushed" with the Hub upload calls patched.

A tiny digits zoo is trained (`build_zoo`: 8 small CNNs, 2 epochs), converted and pushed as a dataset; a SANE is
pretrained on it for a few steps and pushed (after `predict_properties` added probe results to its card); two networks
are generated from it and pushed, and pushed again one per model repo (a zoo of Hub model repos). The transformer
zoo's whole pipeline runs too (quickstart preset `vit_smoke`) and its generated ViTs are pushed as one repo. Every `HfApi` call
that would reach the Hub is replaced by a recorder that copies exactly the files `upload_folder` would send (its
allow/ignore patterns applied) into `captured/<repo_type>/<repo_id>`.
"""

import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.zoo_builder import ZooConfig, build_zoo
from sane_hf.generation import GenerateConfig, generate, push_generated_models
from sane_hf.probing.configs import PredictConfig
from sane_hf.probing.predict import predict_properties
from sane_hf.quickstart import QuickstartConfig, run_quickstart
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import pretrain, push_pretrained_folder
from sane_hf.zoo_models import load_zoo_model


ORG = "sane-test-org"
SANE_REPO = f"{ORG}/sane-cnn-digits-tiny"
ZOO_REPO = f"{ORG}/sane-zoo-cnn-digits-tiny"
GENERATED_REPO = f"{ORG}/sane-generated-cnn-digits-tiny"
# Two generated networks pushed again as model repos of their own: a zoo of Hub model repos (`--zoo_format models`).
MEMBER_REPOS = [f"{ORG}/sane-zoo-member-{index}" for index in range(2)]
# The transformer zoo's pipeline (quickstart preset `vit_smoke`): its generated ViTs pushed as one repo.
VIT_GENERATED_REPO = f"{ORG}/sane-generated-vit-digits-tiny"


class UploadRecorder:
    """Stands in for the Hub side of `HfApi`: records repos, commits (as file copies) and tags."""

    def __init__(self, root: Path):
        self.root = root
        self.repos: dict[tuple[str, str], dict] = {}

    def folder(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.root / repo_type / repo_id

    def create_repo(self, api, repo_id, *, repo_type=None, **kwargs):
        self.repos.setdefault((repo_type or "model", repo_id), {"tags": [], "commits": 0, "create_kwargs": kwargs})
        return mock.Mock(repo_id=repo_id)

    def upload_folder(
        self, api, *, repo_id, folder_path, repo_type=None, path_in_repo=None, allow_patterns=None,
        ignore_patterns=None, delete_patterns=None, **kwargs,
    ):  # fmt: skip
        repo_type = repo_type or "model"
        repo = self.repos[(repo_type, repo_id)]  # KeyError: upload before create_repo
        source = Path(folder_path)
        files = [str(p.relative_to(source)) for p in sorted(source.rglob("*")) if p.is_file()]
        files = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        target = self.folder(repo_id, repo_type)
        # As on the Hub: files of earlier commits stay unless `delete_patterns` match them; uploaded files replace
        # their namesakes. (A push that forgets to delete its stale files leaves them here too.)
        existing = (
            [str(p.relative_to(target)) for p in sorted(target.rglob("*")) if p.is_file()] if target.is_dir() else []
        )
        for name in filter_repo_objects(existing, allow_patterns=delete_patterns) if delete_patterns else []:
            (target / name).unlink()
        for name in files:
            destination = target / (path_in_repo or "") / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, destination)
        repo["commits"] += 1
        repo["files"] = files
        repo["commit_message"] = kwargs.get("commit_message")
        oid = f"{repo['commits']:040x}"
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", oid=oid)

    def list_repo_refs(self, api, repo_id, *, repo_type=None, **kwargs):
        tags = [SimpleNamespace(name=name) for name in self.repos[(repo_type or "model", repo_id)]["tags"]]
        return SimpleNamespace(tags=tags, branches=[SimpleNamespace(name="main")])

    def create_tag(self, api, repo_id, *, tag, repo_type=None, **kwargs):
        self.repos[(repo_type or "model", repo_id)]["tags"].append(tag)

    def delete_tag(self, api, repo_id, *, tag, repo_type=None, **kwargs):
        self.repos[(repo_type or "model", repo_id)]["tags"].remove(tag)

    def patches(self):
        methods = ("create_repo", "upload_folder", "list_repo_refs", "create_tag", "delete_tag")
        return [mock.patch.object(HfApi, name, autospec=True, side_effect=getattr(self, name)) for name in methods]


@pytest.fixture(scope="session")
def hub_artifacts(tmp_path_factory):
    """Local outputs and captured uploads of the zoo dataset, the pretrained SANE and the generated models."""
    root = tmp_path_factory.mktemp("hub_artifacts")
    recorder = UploadRecorder(root / "captured")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patches = recorder.patches()
    for patch in patches:
        patch.start()
    try:
        zoo_dir = root / "zoo"
        # Two optimizers, so the cards carry a categorical probe (the default zoo is SGD only).
        zoo_config = ZooConfig(
            output_dir=str(zoo_dir),
            num_models=8,
            epochs=2,
            batch_size=100,
            seed=3,
            num_threads=1,
            optimizers=["sgd", "adam"],
        )
        build_zoo(zoo_config)
        dataset_dir = root / "zoo_ds"
        convert_zoo(
            ConvertConfig(zoo_dir=str(zoo_dir), output_dir=str(dataset_dir), token_size=64, push_to_hub=ZOO_REPO),
            show_progress=False,
        )
        sane_dir = pretrain(
            PretrainConfig(
                dataset=str(dataset_dir),
                output_dir=str(root / "sane"),
                d_model=16,
                n_heads=2,
                n_layers=1,
                latent_dim=8,
                window_size=32,
                projection_dim=8,
                batch_size=4,
                max_steps=4,
                logging_steps=2,
                seed=5,
                num_threads=1,
                push_to_hub=SANE_REPO,
            )
        )
        pretrain_upload = sorted(recorder.repos[("model", SANE_REPO)]["files"])
        predict_dir = root / "predict"
        predict_properties(
            PredictConfig(
                model=str(sane_dir),
                dataset=str(dataset_dir),
                output_dir=str(predict_dir),
                properties=["test_acc", "optimizer"],
                poolings=["mean"],
                gradient_boosting=False,
                plots=False,
                num_threads=1,
            )
        )
        # Pushed again, as a user would after probing: the card now carries the probe results.
        push_pretrained_folder(sane_dir, SANE_REPO)
        generated_dir = root / "generated"
        generate(
            GenerateConfig(
                model=str(sane_dir),
                dataset=str(dataset_dir),
                output_dir=str(generated_dir),
                sampler="kde",
                n=2,
                num_anchors=2,
                evaluate=False,
                plot=False,
                base_model=SANE_REPO,
                push_to_hub=GENERATED_REPO,
                num_threads=1,
            )
        )
        for index, repo_id in enumerate(MEMBER_REPOS):
            load_zoo_model(generated_dir / f"model_{index:03d}").push_to_hub(repo_id)
        vit_dir = root / "vit"
        run_quickstart(QuickstartConfig(output_dir=str(vit_dir), preset="vit_smoke"))
        push_generated_models(vit_dir / "generated", VIT_GENERATED_REPO)
    finally:
        for patch in patches:
            patch.stop()
        torch.set_num_threads(threads)
    return SimpleNamespace(
        root=root,
        recorder=recorder,
        zoo_dir=zoo_dir,
        dataset_dir=dataset_dir,
        sane_dir=sane_dir,
        predict_dir=predict_dir,
        generated_dir=generated_dir,
        pretrain_upload=pretrain_upload,
        sane=recorder.folder(SANE_REPO),
        zoo=recorder.folder(ZOO_REPO, "dataset"),
        generated=recorder.folder(GENERATED_REPO),
        sane_repo=SANE_REPO,
        zoo_repo=ZOO_REPO,
        generated_repo=GENERATED_REPO,
        member_repos=MEMBER_REPOS,
        vit_dir=vit_dir,
        vit_generated=recorder.folder(VIT_GENERATED_REPO),
        vit_generated_repo=VIT_GENERATED_REPO,
    )


@pytest.fixture
def upload_recorder(tmp_path):
    """An `UploadRecorder` standing in for the Hub for the duration of a test."""
    recorder = UploadRecorder(tmp_path / "captured")
    patches = recorder.patches()
    for patch in patches:
        patch.start()
    try:
        yield recorder
    finally:
        for patch in patches:
            patch.stop()
