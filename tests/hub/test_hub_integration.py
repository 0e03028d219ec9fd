"""Loading by repo id, for real and offline: the pushed artifacts served by a local Hub mirror (olah).

The files the real push functions would upload (captured in tests/hub/conftest.py) are committed into plain git repos
at `<mirrors>/models/<org>/<name>` and `<mirrors>/datasets/<org>/<name>`; `olah` (a self-hosted Hub mirror, installed
into its own venv, cached under ~/.cache/sane_hf_tests) serves them read-only on 127.0.0.1. Fresh
processes with `HF_ENDPOINT` pointing at it and an empty `HF_HOME` then load everything through the public APIs by
id: `AutoModel.from_pretrained` (with `sane_hf` imported, and with `trust_remote_code=True` without it),
`datasets.load_dataset`, `load_zoo_dataset` and the generated model's `load_zoo_model`. What they loaded must equal
what was saved, bit for bit.

The test is skipped (with the pip error) only when olah cannot be installed; with `SANE_HF_REQUIRE_OLAH=1` (CI) it
fails instead.
"""

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file


HERE = Path(__file__).resolve().parent
OLAH_REQUIREMENT = "olah==0.5.4"
OLAH_VENV = Path(os.environ.get("SANE_HF_OLAH_VENV", Path.home() / ".cache" / "sane_hf_tests" / "olah-venv"))
REQUIRE_OLAH = os.environ.get("SANE_HF_REQUIRE_OLAH") == "1"
CLIENT_TIMEOUT_S = 600


def _git(args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "sane_hf tests",
        "GIT_AUTHOR_EMAIL": "tests@sane-hf.invalid",
        "GIT_COMMITTER_NAME": "sane_hf tests",
        "GIT_COMMITTER_EMAIL": "tests@sane-hf.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,  # the user's git config (signing, hooks, templates) stays out of it
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)


def commit_repo(files: Path, target: Path, tags: list[str] = ()) -> None:
    """A plain git repo at `target` whose `main` holds exactly `files` in one commit (plus `tags` on it)."""
    shutil.copytree(files, target)
    _git(["-c", "init.defaultBranch=main", "init", "-q"], target)
    _git(["add", "-A"], target)
    _git(["commit", "-q", "-m", "Upload captured from the sane_hf push"], target)
    for tag in tags:
        _git(["tag", tag], target)


def olah_cli() -> Path:
    """`olah-cli` from its own cached venv, installing it on first use; skips (or fails, in CI) if pip cannot."""
    marker = OLAH_VENV / ".sane_hf_installed"
    cli = OLAH_VENV / "bin" / "olah-cli"
    OLAH_VENV.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(OLAH_VENV) + ".lock"):
        if cli.is_file() and marker.is_file() and marker.read_text() == OLAH_REQUIREMENT:
            return cli
        shutil.rmtree(OLAH_VENV, ignore_errors=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(OLAH_VENV)], check=True, capture_output=True, text=True, timeout=300
            )
            subprocess.run(
                [str(OLAH_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
                + [OLAH_REQUIREMENT],
                check=True,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except (OSError, subprocess.SubprocessError) as err:
            shutil.rmtree(OLAH_VENV, ignore_errors=True)
            output = (getattr(err, "stderr", None) or getattr(err, "stdout", None) or "").strip()[-2000:]
            message = (
                f"could not install {OLAH_REQUIREMENT} into {OLAH_VENV} for the local Hub mirror: {err}\n{output}"
            )
            if REQUIRE_OLAH:
                pytest.fail(message)
            pytest.skip(message)
        marker.write_text(OLAH_REQUIREMENT)
    return cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never through a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


@pytest.fixture(scope="module")
def olah_executable() -> Path:
    return olah_cli()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the client follows olah's redirects itself, through the front
        return None


def range_front(upstream: str) -> http.server.ThreadingHTTPServer:
    """A loopback HTTP front for olah that answers byte-range requests as the Hub does (206 with the range).

    olah serves a local repo's file whole (200) whatever `Range` asks for; a streamed parquet shard is read by ranges
    (its footer first), so `load_dataset(..., streaming=True)` by id would read garbage without this. Everything else
    (method, path, headers, status, redirects) passes through unchanged; call `serve_forever` in a thread.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)
    hop_headers = {"connection", "content-length", "content-range", "transfer-encoding", "content-encoding"}

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "range", "accept-encoding")}
            request = urllib.request.Request(upstream + self.path, data=body, method=self.command, headers=headers)
            try:
                with opener.open(request, timeout=120) as response:
                    status, reply, reply_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as err:
                status, reply, reply_headers = err.code, err.read(), err.headers
            except OSError:  # olah not up yet: the readiness poll asks again
                self.send_error(502)
                return
            size = len(reply) if self.command != "HEAD" else int(reply_headers.get("Content-Length") or 0)
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            extra = []
            if wanted and status == 200:
                start = int(wanted.group(1))
                stop = min(int(wanted.group(2)) + 1 if wanted.group(2) else size, size)
                status, reply = 206, reply[start:stop]
                extra.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
                size = stop - start
            self.send_response(status)
            for key, value in [*((k, v) for k, v in reply_headers.items() if k.lower() not in hop_headers), *extra]:
                self.send_header(key, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply)

        do_GET = do_HEAD = do_POST = _forward

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)


# `olah_executable` is resolved first: when olah cannot be installed, the test skips before the artifacts are made.
@pytest.fixture(scope="module")
def hub_mirror(olah_executable, hub_artifacts, tmp_path_factory):
    """olah serving the captured uploads as `<org>/<name>` repos on 127.0.0.1, behind `range_front`; yields the
    front's URL (the endpoint clients use, and the address olah writes into its redirects)."""
    root = tmp_path_factory.mktemp("hub_mirror")
    mirrors = root / "mirrors"
    recorder = hub_artifacts.recorder
    for (repo_type, repo_id), repo in recorder.repos.items():
        commit_repo(recorder.folder(repo_id, repo_type), mirrors / f"{repo_type}s" / repo_id, repo["tags"])
    port = free_port()
    front = range_front(f"http://127.0.0.1:{port}")
    front_netloc = f"127.0.0.1:{front.server_address[1]}"
    config = root / "configs.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"repos-path = {json.dumps(str(root / 'olah-cache'))}\n"
        'mirror-scheme = "http"\n'
        f'mirror-netloc = "{front_netloc}"\n'
        f'mirror-lfs-netloc = "{front_netloc}"\n'
        f"mirrors-path = [{json.dumps(str(mirrors))}]\n"
        "\n[accessibility]\n"
        "offline = true\n"
    )
    log_path = root / "olah.log"
    endpoint = f"http://{front_netloc}"
    threading.Thread(target=front.serve_forever, daemon=True).start()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(olah_executable), "-c", str(config)], cwd=root, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        ready = f"{endpoint}/api/models/{hub_artifacts.sane_repo}/revision/main"
        deadline = time.monotonic() + 90
        while _http_status(ready) != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                state = "exited" if server.poll() is not None else "is not answering after 90 s"
                pytest.fail(f"olah {state}; its log:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield endpoint
    finally:
        front.shutdown()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_client(script: str, endpoint: str, tmp_path_factory, *args: str) -> Path:
    """Run a loader script in a fresh process against the mirror, with an empty HF_HOME; returns its output folder."""
    out = tmp_path_factory.mktemp(Path(script).stem)
    # No offline flags, no inherited caches or tokens: everything must come from the mirror.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING_FACE_")) and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(out / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TOKENIZERS_PARALLELISM="false",
    )
    result = subprocess.run(
        [sys.executable, str(HERE / script), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def loaded_with_sane_hf(hub_mirror, hub_artifacts, tmp_path_factory) -> Path:
    repos = (
        hub_artifacts.sane_repo,
        hub_artifacts.zoo_repo,
        hub_artifacts.generated_repo,
        *hub_artifacts.member_repos,
    )
    return run_client("_load_with_sane_hf.py", hub_mirror, tmp_path_factory, *repos)


@pytest.fixture(scope="module")
def loaded_without_sane_hf(hub_mirror, hub_artifacts, tmp_path_factory) -> Path:
    repos = (hub_artifacts.sane_repo, hub_artifacts.zoo_repo)
    return run_client("_load_without_sane_hf.py", hub_mirror, tmp_path_factory, *repos)


def assert_same_state(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(saved)
    for key, tensor in saved.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key], tensor), key


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _assert_sane_loaded(out: Path, saved: Path) -> dict:
    meta = _read_json(out / "sane.json")
    assert all(not keys for keys in meta["loading_info"].values()), meta["loading_info"]
    assert_same_state(load_file(out / "sane.safetensors"), load_file(saved / "model.safetensors"))
    # The weight processor's config (layout and normalization of the zoo) came from the repo, as pushed.
    pushed = _read_json(saved / "preprocessor_config.json")
    assert pushed["auto_map"] == {"AutoFeatureExtractor": "processing_sane.SaneProcessor"}
    for part in ("layout", "normalization", "feature_extractor_type"):
        assert meta["processor"][part] == pushed[part], part
    return meta


def test_sane_loads_by_repo_id_with_auto_model_registered(loaded_with_sane_hf, hub_artifacts):
    meta = _assert_sane_loaded(loaded_with_sane_hf, hub_artifacts.sane)
    assert meta["is_sane_hf_class"], meta["class"]
    assert meta["is_sane_hf_processor"]
    processor = _read_json(hub_artifacts.sane / "preprocessor_config.json")
    assert meta["layout"] == processor["layout"] and meta["normalization"] == processor["normalization"]
    config = _read_json(hub_artifacts.sane / "config.json")
    for key in ("token_size", "d_model", "n_layers", "latent_dim", "window_size", "max_positions"):
        assert meta["config"][key] == config[key], key


def test_sane_loads_by_repo_id_with_remote_code_and_no_sane_hf(loaded_without_sane_hf, hub_artifacts):
    meta = _assert_sane_loaded(loaded_without_sane_hf, hub_artifacts.sane)
    # The class came from the modeling file in the repo, not from an installed package.
    assert meta["class"].startswith("transformers_modules.") and meta["class"].endswith("modeling_sane.SaneModel")
    processor_class = meta["processor_class"]
    assert processor_class.startswith("transformers_modules.") and processor_class.endswith(".SaneProcessor")


def test_the_remote_processor_turns_zoo_tokens_into_checkpoints_and_back(loaded_without_sane_hf, hub_artifacts):
    """Without sane_hf: de-normalize + detokenize two train rows into state_dicts, then tokenize + normalize them;
    the tokens are the dataset's, and the state_dict holds the zoo's weights (de-normalized by hand here)."""
    result = load_file(loaded_without_sane_hf / "processor.safetensors")
    tokens, retokenized = result["tokens"], result["retokenized"]
    assert retokenized.shape == tokens.shape
    torch.testing.assert_close(retokenized, tokens, rtol=1e-5, atol=1e-5)
    processor = _read_json(hub_artifacts.sane / "preprocessor_config.json")
    layout, statistics = processor["layout"], processor["normalization"]["layers"]
    first = layout["layers"][0]  # its weight rows: the first tokens, `row_width` values per row (bias last)
    rows, width, per_row = first["num_rows"], first["row_width"], first["tokens_per_row"]
    mean, std = statistics[first["name"]]["mean"], statistics[first["name"]]["std"]
    offset = first["token_offset"]
    raw = tokens[0, offset : offset + rows * per_row].reshape(rows, -1)[:, :width] * std + mean
    weight = result[f"state_dict.{first['weight_key']}"]
    bias_key = first["bias_key"]
    torch.testing.assert_close(weight.reshape(rows, -1), raw[:, : width - (bias_key is not None)])
    if bias_key is not None:
        torch.testing.assert_close(result[f"state_dict.{bias_key}"], raw[:, -1])
    assert result["positions"].shape == (2, tokens.shape[1], 3)
    assert result["embeddings"].shape[0] == 2 and torch.isfinite(result["embeddings"]).all()


def _saved_zoo(folder: Path) -> dict[str, dict]:
    """The pushed parquet shards, read locally with `datasets` (no Hub involved)."""
    import datasets

    info = _read_json(folder / "meta" / "info.json")
    splits = {}
    for split, split_info in info["splits"].items():
        if not split_info["num_checkpoints"]:
            continue
        files = [str(folder / f) for f in split_info["files"]]
        rows = datasets.load_dataset("parquet", data_files={split: files})[split].with_format("torch")[:]
        splits[split] = {"tokens": rows["tokens"], "model_id": list(rows["model_id"]), "epoch": rows["epoch"].tolist()}
    return splits


@pytest.mark.parametrize("client", ["loaded_with_sane_hf", "loaded_without_sane_hf"])
def test_zoo_dataset_loads_by_repo_id(client, request, hub_artifacts):
    out = request.getfixturevalue(client)
    saved = _saved_zoo(hub_artifacts.zoo)
    loaded = _read_json(out / "zoo.json")
    assert sorted(loaded["splits"]) == sorted(saved) and "train" in saved
    for split, rows in saved.items():
        assert loaded["splits"][split]["model_id"] == rows["model_id"]
        assert loaded["splits"][split]["epoch"] == rows["epoch"]
        tokens = load_file(out / f"zoo_{split}.safetensors")["tokens"]
        assert tokens.dtype == torch.float32 and torch.equal(tokens, rows["tokens"])
    if client == "loaded_with_sane_hf":
        assert loaded["layout"] == _read_json(hub_artifacts.zoo / "meta" / "layout.json")
        assert loaded["normalization"] == _read_json(hub_artifacts.zoo / "meta" / "normalization.json")


def test_generated_model_loads_by_repo_id(loaded_with_sane_hf, hub_artifacts):
    meta = _read_json(loaded_with_sane_hf / "generated.json")
    assert meta == {"zoo_name": "cnn_s", "training": False}
    saved = load_file(hub_artifacts.generated / "model_000" / "model.safetensors")
    assert_same_state(load_file(loaded_with_sane_hf / "generated.safetensors"), saved)
    # What was pushed is what `sane-generate` saved locally.
    assert_same_state(saved, load_file(hub_artifacts.generated_dir / "model_000" / "model.safetensors"))


def test_pretraining_starts_from_a_sane_given_by_repo_id(loaded_with_sane_hf, hub_artifacts):
    """`--init_from <repo id>`: before its first step the model holds exactly the published weights."""
    first_step = load_file(loaded_with_sane_hf / "init_from.safetensors")
    assert_same_state(first_step, load_file(hub_artifacts.sane / "model.safetensors"))


def test_pretraining_reads_the_dataset_at_the_given_revision(loaded_with_sane_hf, hub_artifacts):
    """`--dataset_revision`: the zoo's format tag loads and is recorded; a revision the repo lacks is an error
    (were the option ignored, the main branch would load)."""
    from sane_hf.data.info import ZOO_DATASET_TAG

    revisions = _read_json(loaded_with_sane_hf / "dataset_revision.json")
    assert revisions["recorded"]["revision"] == ZOO_DATASET_TAG
    assert "no-such-revision" in revisions.get("missing_revision_error", "")


def test_pretraining_streams_a_zoo_given_by_repo_id(loaded_with_sane_hf, hub_artifacts, tmp_path):
    """`sane-pretrain --dataset <repo id> --streaming true` trains on the stream from the mirror: the same weights and
    log as the same run streaming the local folder that was pushed, three passes of its train split."""
    from _load_with_sane_hf import STREAMED_RUN

    from sane_hf.cli import main_pretrain
    from sane_hf.training.checkpoints import read_trainer_state

    local = tmp_path / "streamed_locally"
    main_pretrain(["--dataset", str(hub_artifacts.dataset_dir), "--output_dir", str(local), *STREAMED_RUN])
    by_id = loaded_with_sane_hf / "streamed"
    assert_same_state(load_file(by_id / "model.safetensors"), load_file(local / "model.safetensors"))
    state, local_state = read_trainer_state(by_id), read_trainer_state(local)
    train_rows = _read_json(hub_artifacts.zoo / "meta" / "info.json")["splits"]["train"]["num_checkpoints"]
    assert state["optimizer_steps"] == 3 * (train_rows // 4) and state["epoch"] == 3
    drop_seconds = lambda log: [{k: v for k, v in line.items() if k != "seconds"} for line in log]  # noqa: E731
    assert drop_seconds(state["log_history"]) == drop_seconds(local_state["log_history"])
    assert state["dataset"]["hub_id"] == hub_artifacts.zoo_repo


def test_a_zoo_of_hub_model_repos_reads_each_repos_own_weights(loaded_with_sane_hf, hub_artifacts):
    """`open_zoo("a,b", "models")` downloads every repo id (no stand-in returning one folder for both)."""
    records = _read_json(loaded_with_sane_hf / "members.json")
    assert [r["model_id"] for r in records] == hub_artifacts.member_repos
    loaded = load_file(loaded_with_sane_hf / "members.safetensors")
    saved_configs = []
    for index, record in enumerate(records):
        saved = load_file(hub_artifacts.generated_dir / f"model_{index:03d}" / "model.safetensors")
        assert_same_state(
            {k.split("/", 2)[2]: v for k, v in loaded.items() if k.startswith(record["model_id"] + "/")}, saved
        )
        config = _read_json(hub_artifacts.generated_dir / f"model_{index:03d}" / "config.json")
        assert record["architecture"] == config.pop("zoo_architecture") and record["model_kwargs"] == config
        saved_configs.append(saved)
    assert any(not torch.equal(saved_configs[0][k], saved_configs[1][k]) for k in saved_configs[0])  # two networks


def test_the_sane_cards_usage_snippet_runs_against_the_hub_repo(loaded_with_sane_hf, hub_artifacts):
    usage = load_file(loaded_with_sane_hf / "usage.safetensors")
    config = _read_json(hub_artifacts.sane / "config.json")
    tokens, embeddings = usage["tokens"], usage["embeddings"]
    assert tokens.ndim == 3 and tokens.shape[2] == config["token_size"]
    assert embeddings.shape == (tokens.shape[0], config["latent_dim"]) and torch.isfinite(embeddings).all()
    assert usage["reconstruction"].shape == tokens.shape
    assert torch.equal(embeddings, load_file(loaded_with_sane_hf / "usage_direct.safetensors")["embeddings"])


def test_generated_transformers_load_by_repo_id_with_auto_model_and_no_sane_hf(
    hub_mirror, hub_artifacts, tmp_path_factory
):
    """The transformer zoo's generated ViTs are ordinary transformers repos: `AutoModelForImageClassification` loads
    them by repo id (one subfolder per model) and from a folder, with no `sane_hf`, and computes what the zoo class
    computes from the same folder."""
    from sane_hf.tasks import load_task
    from sane_hf.zoo_models import load_zoo_model

    generated = hub_artifacts.vit_dir / "generated"
    folders = sorted(p for p in generated.iterdir() if p.name.startswith("model_"))
    images = tmp_path_factory.mktemp("vit_images") / "images.safetensors"
    pixel_values = load_task("digits").test.images[:16].contiguous()
    save_file({"pixel_values": pixel_values}, images)
    out = run_client(
        "_load_vit_without_sane_hf.py", hub_mirror, tmp_path_factory, str(images),
        hub_artifacts.vit_generated_repo, str(len(folders)), str(folders[0]),
    )  # fmt: skip
    meta = _read_json(out / "vit.json")
    for index, folder in enumerate(folders):
        # The pushed folder is the saved one: config.json + model.safetensors + a card with the SANE provenance.
        pushed = hub_artifacts.vit_generated / folder.name
        assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        assert_same_state(load_file(pushed / "model.safetensors"), load_file(folder / "model.safetensors"))
        card = (pushed / "README.md").read_text(encoding="utf-8")
        assert "library_name: transformers" in card and "AutoModelForImageClassification.from_pretrained" in card
        assert "SANE" in card and "sane_generation:" in card  # provenance: sampler, anchors, source SANE
        assert _read_json(pushed / "config.json")["architectures"] == ["ViTForImageClassification"]
        name = f"repo_{index:03d}"
        assert meta[name]["class"] == "ViTForImageClassification"
        assert all(not keys for keys in meta[name]["loading_info"].values()), meta[name]["loading_info"]
        with torch.no_grad():
            expected = load_zoo_model(folder).eval()(pixel_values)
        torch.testing.assert_close(
            load_file(out / f"logits_{name}.safetensors")["logits"], expected, rtol=0, atol=1e-6
        )
    torch.testing.assert_close(
        load_file(out / "logits_local.safetensors")["logits"], load_file(out / "logits_repo_000.safetensors")["logits"]
    )
