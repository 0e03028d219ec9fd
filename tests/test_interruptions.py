"""Interruptions: `make_zoo`, `convert_zoo` and `pretrain` killed with SIGKILL at a random point, then rerun with the
same command, finish with the same outputs as an uninterrupted run, and leave no temporary file behind.

Each killed run is a child process forked from the test process (a fresh interpreter would spend ~15 s importing
torch and transformers per kill point on the 2-core CI machines); it runs the console entry point (`sane_hf.cli`)
with the same arguments as the reference and is killed with a real SIGKILL after a seeded-random delay drawn over
the reference's duration. The rerun runs in the test process. Every output file is compared byte for byte,
except for what legitimately differs between two runs (`_comparable`): the output folder recorded in
`zoo_config.json` and `train_config.json`, and the wall time of pretraining (`seconds` in `trainer_state.json`, in
its log lines and in the step checkpoints' log state, the "wall time" row of the SANE card). Step checkpoints
(model, optimizer, scheduler, sampler and RNG states) are byte-compared too. Every kill point prints its outcome (run with `-s`).
"""

import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from sane_hf.data import convert as convert_module


REPO = Path(__file__).resolve().parents[1]
KILL_POINTS = {"make_zoo": 2, "convert_zoo": 3, "pretrain": 3}
# Leftovers of atomic writes: `write_bytes_atomic` (.<name>.<random>.tmp), `make_temporary_dir` (.<name>.tmp-<pid>-*),
# parquet shards being written (.partial), pretraining's `.step_<N>.tmp` and `.save_pretrained.tmp`, `.old-` swaps,
# and the writer's lock (a killed writer's lock is taken over by the rerun, and released when it finishes).
TEMPORARY_MARKERS = (".tmp", ".partial", ".old-", ".lock")


def _zoo_args(output: Path) -> list[str]:
    config = REPO / "scripts" / "configs" / "zoo_tiny_test.yaml"
    return ["--config", str(config), "--output_dir", str(output), "--num_models", "6"]


def _convert_args(zoo: Path, output: Path) -> list[str]:
    # Small shards: several files per split, so a kill can land between shards.
    return ["--zoo_dir", str(zoo), "--output_dir", str(output), "--token_size", "16", "--shard_size_mb", "0.01"]


def _pretrain_args(dataset: Path, output: Path) -> list[str]:
    values = {
        "dataset": dataset,
        "output_dir": output,
        "d_model": 16,
        "n_heads": 2,
        "n_layers": 1,
        "latent_dim": 4,
        "window_size": 16,
        "dropout": 0.1,  # dropout masks come from the global RNG: resume must restore it exactly
        "batch_size": 4,
        "max_steps": 60,
        "epochs": 100,
        "save_steps": 5,
        "logging_steps": 4,
        "seed": 7,
        "num_threads": 1,
        "resume_from_checkpoint": "auto",
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _run_main(main_name: str, args: list[str]) -> None:
    from sane_hf import cli

    getattr(cli, main_name)(args)


def _own_tqdm_locks(cls=None) -> None:
    """Give the forked child its own progress-bar locks. tqdm's default write lock includes a multiprocessing
    semaphore shared with the parent across fork: a child killed while holding it would leave it held forever, and
    the parent's next progress bar (the rerun below) would wait on it without end."""
    import threading

    import tqdm.std

    cls = cls or tqdm.std.tqdm
    cls._lock = threading.RLock()
    for subclass in cls.__subclasses__():
        _own_tqdm_locks(subclass)


def _child(main_name: str, args: list[str]) -> None:
    _own_tqdm_locks()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    _run_main(main_name, args)


def _run_and_kill(main_name: str, args: list[str], delay: float) -> int | None:
    """Run `main_name(args)` in a forked child and SIGKILL it after `delay` s; returns its exit code if it finished
    first (None if it was killed)."""
    process = multiprocessing.get_context("fork").Process(target=_child, args=(main_name, args))
    process.start()
    process.join(delay)
    if process.exitcode is not None:
        return process.exitcode
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    if process.exitcode == 0:  # it finished between the timeout and the kill
        return 0
    assert process.exitcode == -signal.SIGKILL
    return None


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _drop_log_seconds(history: list[dict]) -> None:
    """Remove the wall time of each pretraining log line (the x-axis of quality-per-second curves)."""
    for line in history:
        line.pop("seconds", None)


def _comparable(relative: str, path: Path) -> bytes:
    """The bytes two runs must share: the file, or for run records the JSON without per-run fields."""
    name = Path(relative).name
    drop = {
        "zoo_config.json": ("output_dir",),
        "train_config.json": ("output_dir",),
        "trainer_state.json": ("seconds", "resumed_from_step", "steps_this_run"),
    }
    if name in drop and "/" not in relative:
        data = json.loads(path.read_text())
        _drop_log_seconds(data.get("log_history", []))
        return json.dumps({k: v for k, v in data.items() if k not in drop[name]}, sort_keys=True).encode()
    if name == "sane_state.json":  # a step checkpoint's loop state: counters, log and the wall time so far
        state = json.loads(path.read_text())
        del state["log"]["seconds"]
        _drop_log_seconds(state["log"]["history"])
        return json.dumps(state, sort_keys=True).encode()
    if relative == "README.md" and (path.parent / "trainer_state.json").is_file():
        # The SANE card shows the wall time of trainer_state.json.
        return "".join(line for line in path.read_text().splitlines(True) if "| wall time |" not in line).encode()
    return path.read_bytes()


def _leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if any(m in p.name for m in TEMPORARY_MARKERS)]


def _compare(reference: Path, resumed: Path) -> list[str]:
    """Relative paths that differ (missing on one side, or other content)."""
    ref, new = _files(reference), _files(resumed)
    differ = sorted(set(ref) ^ set(new))
    differ += [rel for rel in sorted(set(ref) & set(new)) if _comparable(rel, ref[rel]) != _comparable(rel, new[rel])]
    return differ


def _state(script: str, output: Path) -> str:
    """What the killed run had left, in words (for the closing note)."""
    if script == "make_zoo":
        done = len(list(output.glob("models/*/DONE")))
        started = len(list(output.glob("models/*")))
        return f"{done} of 6 models finished, {started - done} unfinished folder(s)"
    if script == "convert_zoo":
        if output.exists():
            return "dataset complete (the kill came after the final rename)"
        temporary = list(output.parent.glob(f".{output.name}.tmp-*"))
        shards = sum(len(list(t.glob("data/*"))) for t in temporary)
        return f"no dataset; {len(temporary)} temporary folder(s) with {shards} shard file(s)"
    steps = sorted(int(p.name[5:]) for p in output.glob("checkpoints/step_*"))
    final = (output / "model.safetensors").exists()
    return f"step checkpoints {steps}, final model {'saved' if final else 'absent'}"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs of the three scripts, chained (zoo -> dataset -> SANE), with their wall times."""
    from sane_hf.tasks import load_task

    torch.set_num_threads(1)
    load_task("digits")  # first-use costs (scikit-learn import) out of the timed reference, as in the children
    root = tmp_path_factory.mktemp("interruptions_reference")
    runs = {}
    start = time.perf_counter()
    _run_main("main_make_zoo", _zoo_args(root / "zoo"))
    runs["make_zoo"] = (root / "zoo", time.perf_counter() - start)
    start = time.perf_counter()
    _run_main("main_convert_zoo", _convert_args(root / "zoo", root / "zoo_ds"))
    runs["convert_zoo"] = (root / "zoo_ds", time.perf_counter() - start)
    start = time.perf_counter()
    _run_main("main_pretrain", _pretrain_args(root / "zoo_ds", root / "sane"))
    runs["pretrain"] = (root / "sane", time.perf_counter() - start)
    return {"root": root, **runs}


SCRIPTS = {
    "make_zoo": ("main_make_zoo", lambda refs, out: _zoo_args(out)),
    "convert_zoo": ("main_convert_zoo", lambda refs, out: _convert_args(refs["root"] / "zoo", out)),
    "pretrain": ("main_pretrain", lambda refs, out: _pretrain_args(refs["root"] / "zoo_ds", out)),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_killed_run_resumes_to_identical_outputs(script, references, tmp_path):
    main_name, make_args = SCRIPTS[script]
    reference, seconds = references[script]
    rng = random.Random(f"kill points of {script}")
    killed = []
    for point in range(KILL_POINTS[script]):
        output = tmp_path / f"kill_{point}" / reference.name
        output.parent.mkdir()
        args = make_args(references, output)
        # Over the reference's duration (the child starts working at once: it is forked with everything imported).
        delay = round(rng.uniform(0.05, 0.9) * seconds, 3)
        for _ in range(2):
            exit_code = _run_and_kill(main_name, args, delay)
            if exit_code is None:
                break
            # The child outran the reference's clock and finished: start over with half the delay (once).
            shutil.rmtree(output.parent)
            output.parent.mkdir()
            delay = round(delay / 2, 3)
        else:
            exit_code = _run_and_kill(main_name, args, delay)
        left = _state(script, output)
        checkpoint_steps = sorted(int(p.name[5:]) for p in output.glob("checkpoints/step_*"))
        # The same command again (a dataset renamed into place before the kill is complete: the rerun skips it).
        _run_main(main_name, args)
        differ = _compare(reference, output)
        leftovers = _leftovers(output.parent)
        row = json.dumps(
            {
                "script": script,
                "kill_point": point,
                "delay_s": delay,
                "reference_s": round(seconds, 2),
                "killed": exit_code is None,
                "state_at_kill": left,
                "identical": not differ,
                "leftovers": leftovers,
            }
        )
        print(f"\n{row}")  # the kill points and their outcomes (pytest -s)
        assert exit_code in (None, 0)
        assert differ == [], f"{script}, kill after {delay} s ({left}): {differ[:5]}"
        assert leftovers == [], leftovers
        killed.append(exit_code is None)
        if script == "pretrain":
            # Equal outputs do not show a resume (a rerun from step 0 is deterministic too): the rerun must start at
            # the killed run's last step checkpoint and run only the remaining steps.
            state = json.loads((output / "trainer_state.json").read_text())
            resumed_at = checkpoint_steps[-1] if checkpoint_steps else None
            assert (state["resumed_from_step"], state["steps_this_run"]) == (resumed_at, 60 - (resumed_at or 0)), left
    # Otherwise only finished runs were rerun, and nothing about interruptions was tested.
    assert any(killed), f"no kill of {script} landed before the run finished"


def test_a_lock_left_by_a_killed_writer_is_taken_over_and_released(tmp_path):
    from sane_hf.utils.io import output_lock

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}))
    with output_lock(tmp_path / "out") as path:
        assert path == lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()

    # A lock of another host is never taken over: whether its process still runs cannot be checked from here.
    lock.write_text(json.dumps({"pid": dead_pid, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(FileExistsError, match=f"being written by another process \\(pid {dead_pid} on host elsewhere"):
        with output_lock(tmp_path / "out"):
            pass
    assert json.loads(lock.read_text())["host"] == "elsewhere"


def test_rerunning_a_finished_conversion_skips_it(tmp_path, zoo_tools, capsys):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=4, num_epochs=1)
    output = tmp_path / "zoo_ds"
    args = ["--zoo_dir", str(zoo), "--output_dir", str(output), "--token_size", "16"]
    retain = mock.patch.object(convert_module, "retain_freed_memory", wraps=convert_module.retain_freed_memory)
    with retain as retain_calls:
        _run_main("main_convert_zoo", args)
    assert retain_calls.call_count == 1  # `retain_freed_memory` is on by default
    written = {relative: path.stat().st_mtime_ns for relative, path in _files(output).items()}
    capsys.readouterr()

    _run_main("main_convert_zoo", args)  # the same command: exit 0, nothing rewritten
    assert capsys.readouterr().out.startswith("Already converted (same zoo models and options; skipped): ")
    assert {relative: path.stat().st_mtime_ns for relative, path in _files(output).items()} == written
    # Options that steer the run but not the dataset do not make it another conversion.
    with retain as retain_calls:
        _run_main("main_convert_zoo", args + ["--retain_freed_memory", "false", "--num_threads", "2"])
    assert retain_calls.call_count == 0
    assert capsys.readouterr().out.startswith("Already converted (same zoo models and options; skipped): ")

    # Another option, or a zoo that gained a model, is another conversion: refused without --overwrite.
    shutil.copytree(zoo / "models" / "model_0000", zoo / "models" / "model_0099")
    for other in (args[:-1] + ["32"], args):
        with pytest.raises(SystemExit) as info:
            _run_main("main_convert_zoo", other)
        assert info.value.code == 1
        assert "output_dir exists and is not empty" in capsys.readouterr().err


def test_rerunning_a_finished_generation_skips_it(tmp_path, zoo_tools, capsys):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=4, num_epochs=1)
    _run_main("main_convert_zoo", _convert_args(zoo, tmp_path / "zoo_ds"))
    pretrain_args = _pretrain_args(tmp_path / "zoo_ds", tmp_path / "sane")
    pretrain_args[pretrain_args.index("--max_steps") + 1] = "2"
    _run_main("main_pretrain", pretrain_args)
    output = tmp_path / "gen"
    args = ["--model", str(tmp_path / "sane"), "--dataset", str(tmp_path / "zoo_ds"), "--output_dir", str(output)]
    args += ["--n", "2", "--num_anchors", "2", "--sampler", "kde", "--evaluate", "false", "--num_threads", "1"]
    _run_main("main_generate", args)
    written = {relative: path.stat().st_mtime_ns for relative, path in _files(output).items()}
    capsys.readouterr()

    _run_main("main_generate", args + ["--num_threads", "2"])  # the same run (threads change no network): exit 0
    assert capsys.readouterr().out == f"Already generated (same options; skipped): 2 kde networks in {output}.\n"
    assert {relative: path.stat().st_mtime_ns for relative, path in _files(output).items()} == written

    with pytest.raises(SystemExit) as info:  # another option is another run: refused without --overwrite
        _run_main("main_generate", args + ["--seed", "1"])
    assert info.value.code == 1
    assert "does not hold a generation with these options" in capsys.readouterr().err


def _child_with_stderr(main_name: str, args: list[str], stderr_path: str) -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.stderr = open(2, "w", closefd=False)  # pytest's capture object, inherited by the fork, is not fd 2
    torch.set_num_threads(1)
    _run_main(main_name, args)


def test_ctrl_c_ends_with_one_line_and_leaves_nothing_half_written(tmp_path, zoo_tools):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=4, num_epochs=1)
    _run_main("main_convert_zoo", _convert_args(zoo, tmp_path / "zoo_ds"))
    output = tmp_path / "sane"
    args = _pretrain_args(tmp_path / "zoo_ds", output)
    for option in ("--max_steps", "--epochs"):
        args[args.index(option) + 1] = "100000"  # still training when Ctrl-C comes
    stderr = tmp_path / "stderr.txt"
    process = multiprocessing.get_context("fork").Process(
        target=_child_with_stderr, args=("main_pretrain", args, str(stderr))
    )
    process.start()
    process.join(3.0)
    assert process.exitcode is None, "the run ended before Ctrl-C"
    os.kill(process.pid, signal.SIGINT)
    process.join(60)
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    assert process.exitcode == 130, lines[-5:]
    assert lines[-1] == (
        "sane-pretrain: interrupted; no output file is half-written: run the same command to resume or redo it."
    ), lines[-5:]
    assert not any("Traceback" in line for line in lines)
    assert not (output / "model.safetensors").exists()
    assert _leftovers(tmp_path) == []
