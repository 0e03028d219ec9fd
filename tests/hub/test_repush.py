"""Pushing again to the same repo leaves no stale file of the earlier push (the recorder keeps files of earlier
commits unless the push deletes them, as the Hub does)."""

import json
from pathlib import Path

from sane_hf.data import push_zoo_dataset
from sane_hf.generation import push_generated_models


def _write(folder: Path, files: list[str]) -> Path:
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(name))
    return folder


def _repo_files(recorder, repo_id: str, repo_type: str = "model") -> list[str]:
    root = recorder.folder(repo_id, repo_type)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _push_twice(tmp_path: Path, push, first: list[str], second: list[str]) -> None:
    push(_write(tmp_path / "first", first))
    push(_write(tmp_path / "second", second))


def test_a_second_generation_push_with_fewer_models_removes_the_others(tmp_path, upload_recorder):
    models = [f"model_{i:03d}/{name}" for i in range(3) for name in ("config.json", "model.safetensors")]
    common = ["README.md", "generation.json"]
    _push_twice(
        tmp_path, lambda folder: push_generated_models(folder, "org/gen"), common + models, common + models[:4]
    )
    assert _repo_files(upload_recorder, "org/gen") == sorted(common + models[:4])


def test_a_second_zoo_push_with_fewer_shards_removes_the_old_shards(tmp_path, upload_recorder):
    meta = ["README.md", "meta/info.json", "meta/layout.json"]
    shards = [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    _push_twice(
        tmp_path,
        lambda folder: push_zoo_dataset(folder, "org/zoo", tag=False),
        meta + ["meta/stats_old.json", *shards],
        meta + ["data/train-00000-of-00001.parquet"],
    )
    assert _repo_files(upload_recorder, "org/zoo", "dataset") == sorted(meta + ["data/train-00000-of-00001.parquet"])
