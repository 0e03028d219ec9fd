"""Untrusted content: pickles never run code, a SANE folder's code never runs without `trust_remote_code=True`, and a
Hub token in the environment never reaches a file or a log the pipeline writes."""

import ast
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_fakeTOKENsaneHF0123456789abcdefXYZ"


def test_code_running_pickle_in_an_original_zoo_is_refused_and_never_runs(tmp_path, zoo_tools):
    from sane_hf.data.zoo import ZooFormatError, open_zoo

    # The payload is live: an unsafe load runs it.
    control = tmp_path / "control.marker"
    zoo_tools.write_malicious_checkpoint(tmp_path / "control.pt", control)
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    zoo = zoo_tools.write_modelzoo(tmp_path / "zoo", num_models=2, num_epochs=1)
    planted = sorted(zoo.glob("*/checkpoint_*1/checkpoints"))[0]
    marker = tmp_path / "planted.marker"
    zoo_tools.write_malicious_checkpoint(planted, marker)
    with pytest.raises(ZooFormatError, match=r"refused to load: torch\.load\(weights_only=True\) rejected") as info:
        list(open_zoo(zoo).iter_checkpoints())
    assert str(planted) in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def sane_folder(tmp_path_factory) -> Path:
    """A saved SANE (config.json with `auto_map`, the copied modeling files), as `save_pretrained` writes it."""
    from sane_hf import SaneConfig, SaneModel

    folder = tmp_path_factory.mktemp("untrusted") / "sane"
    config = SaneConfig(token_size=8, d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=4)
    SaneModel(config).save_pretrained(folder)
    return folder


def _plant(folder: Path, marker: Path) -> None:
    """Make the folder's modeling code leave `marker` when it is executed."""
    for name in ("configuration_sane.py", "modeling_sane.py"):
        path = folder / name
        path.write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n" + path.read_text())


def test_saved_sane_code_never_runs_without_trust_remote_code(sane_folder, tmp_path):
    import shutil

    folder = shutil.copytree(sane_folder, tmp_path / "sane")
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_sane.SaneModel"
    marker = tmp_path / "code_ran.marker"
    _plant(folder, marker)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path

        from transformers import AutoModel

        folder, marker = {str(folder)!r}, Path({str(marker)!r})
        try:
            AutoModel.from_pretrained(folder)
        except ValueError as error:
            print("REFUSED:", " ".join(str(error).split()))
        else:
            print("LOADED")
        print("MARKER_AFTER_REFUSAL:", marker.exists())
        print("SANE_HF_IMPORTED:", any(m == "sane_hf" or m.startswith("sane_hf.") for m in sys.modules))
        AutoModel.from_pretrained(folder, trust_remote_code=True)  # the control: now the folder's code runs
        print("MARKER_AFTER_TRUST:", marker.exists())
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # transformers first prints its "[y/N]" prompt (no newline; stdin is closed, so the answer is no)
    lines = dict(re.findall(r"([A-Z_]+): (.*)", result.stdout))
    assert "trust_remote_code=True" in lines["REFUSED"], result.stdout
    assert lines["MARKER_AFTER_REFUSAL"] == "False"
    assert lines["SANE_HF_IMPORTED"] == "False"
    assert lines["MARKER_AFTER_TRUST"] == "True"


def test_sane_hf_loads_a_saved_sane_with_its_own_code_only(sane_folder, tmp_path):
    """Loading through sane_hf (the registered classes) never imports the folder's copied modeling files."""
    import shutil

    from transformers import AutoModel

    from sane_hf.probing.predict import load_sane

    folder = shutil.copytree(sane_folder, tmp_path / "sane")
    marker = tmp_path / "code_ran.marker"
    _plant(folder, marker)
    assert type(AutoModel.from_pretrained(folder)).__module__ == "sane_hf.models.sane.modeling_sane"
    load_sane(str(folder))
    assert not marker.exists()


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def test_library_never_trusts_remote_code_unpickles_unsafely_or_reads_the_token():
    """Static checks over sane_hf's code: no `trust_remote_code=True`, `torch.load` only with `weights_only=True`, no
    `pickle.load(s)`, and no direct read of `HF_TOKEN` (tokens come from huggingface_hub)."""
    problems = []
    for path in sorted((REPO / "sane_hf").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(REPO)
        for call in _calls(tree):
            name = ast.unparse(call.func)
            keywords = {k.arg: k.value for k in call.keywords}
            trust = keywords.get("trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                problems.append(f"{where}:{call.lineno}: {name}(trust_remote_code={ast.unparse(trust)})")
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    problems.append(f"{where}:{call.lineno}: {ast.unparse(call)} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "dill.load"):
                problems.append(f"{where}:{call.lineno}: {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
                problems.append(f"{where}:{node.lineno}: reads {node.value} itself")
    assert problems == []


class _FakeHub:
    """Stands in for the Hub's write endpoints (the network is off in tests): records every folder upload."""

    def __init__(self):
        self.uploads = []

    def patches(self):
        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            self.uploads.append((repo_id, kwargs.get("repo_type"), files))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0", oid="0" * 40)

        return [
            mock.patch("huggingface_hub.HfApi.create_repo", return_value="https://huggingface.co/x"),
            mock.patch("huggingface_hub.HfApi.upload_folder", upload_folder),
            mock.patch("huggingface_hub.HfApi.list_repo_refs", return_value=SimpleNamespace(tags=[], branches=[])),
            mock.patch("huggingface_hub.HfApi.create_tag"),
            mock.patch("huggingface_hub.HfApi.delete_tag"),
        ]


def test_a_hub_token_in_the_environment_never_reaches_files_or_logs(tmp_path, monkeypatch, caplog, capsys):
    """The tiny pipeline with `HF_TOKEN` set and every push on: the token appears in no file and no log line."""
    from huggingface_hub import get_token

    from sane_hf import cli

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert get_token() == FAKE_TOKEN  # huggingface_hub sees it (what an upload would use)
    caplog.set_level(logging.DEBUG)
    hub = _FakeHub()
    zoo, dataset, sane, predict, generated = (tmp_path / name for name in ("zoo", "zoo_ds", "sane", "predict", "gen"))
    tiny_sane = ["--d_model", "16", "--n_heads", "2", "--n_layers", "1", "--latent_dim", "4", "--window_size", "16"]
    with contextlib.ExitStack() as stack:
        for patch in hub.patches():
            stack.enter_context(patch)
        torch.set_num_threads(1)
        config = REPO / "scripts" / "configs" / "zoo_tiny_test.yaml"
        cli.main_make_zoo(["--config", str(config), "--output_dir", str(zoo), "--num_models", "4"])
        cli.main_convert_zoo(
            ["--zoo_dir", str(zoo), "--output_dir", str(dataset), "--token_size", "32", "--push_to_hub", "org/zoo"]
        )
        cli.main_pretrain(
            ["--dataset", str(dataset), "--output_dir", str(sane), *tiny_sane, "--batch_size", "2"]
            + ["--max_steps", "3", "--save_steps", "2", "--push_to_hub", "org/sane", "--num_threads", "1"]
        )
        cli.main_predict(["--model", str(sane), "--dataset", str(dataset), "--output_dir", str(predict)])
        cli.main_generate(
            ["--model", str(sane), "--dataset", str(dataset), "--output_dir", str(generated), "--num_anchors", "2"]
            + ["--n", "2", "--num_candidates", "2", "--evaluate", "false", "--push_to_hub", "org/generated"]
        )
    assert [repo for repo, _, _ in hub.uploads] == ["org/zoo", "org/sane", "org/generated"]
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 50
    leaks = [str(path) for path in written if FAKE_TOKEN.encode() in path.read_bytes()]
    assert leaks == []
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err
    assert FAKE_TOKEN not in caplog.text
