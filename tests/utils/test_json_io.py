import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sane_hf.utils.io import json_safe, read_json


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.float32(0.5), 0.5),
        (np.float64(0.25), 0.25),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (torch.tensor(1.5), 1.5),
        (torch.tensor(3), 3),
        (np.array(2.0), 2.0),
        ("text", "text"),
        (None, None),
        (False, False),
        (12, 12),
    ],
)
def test_scalars_become_python_numbers(value, expected):
    converted = json_safe(value)
    assert converted == expected
    assert type(converted) is type(expected)


def test_arrays_tensors_and_containers_recursively():
    value = {
        1: (np.int32(2), torch.tensor([0.5, 1.0])),
        "nested": {"rows": [np.array([[1, 2], [3, 4]]), torch.tensor([[True]])]},
    }
    expected = {"1": [2, [0.5, 1.0]], "nested": {"rows": [[[1, 2], [3, 4]], [[True]]]}}
    assert json_safe(value) == expected
    assert type(json_safe(value)["1"][1][0]) is float


def test_non_finite_numbers_are_none_in_strict_json():
    value = {"nan": float("nan"), "inf": np.float32("inf"), "list": [torch.tensor(float("-inf")), 1.0]}
    converted = json_safe(value)
    assert converted == {"nan": None, "inf": None, "list": [None, 1.0]}
    json.dumps(converted, allow_nan=False)  # strict JSON


def test_non_finite_numbers_kept_when_not_strict():
    converted = json_safe(
        {"a": np.float64("nan"), "b": [torch.tensor(float("inf")), np.array([-np.inf])]}, strict=False
    )
    assert math.isnan(converted["a"]) and type(converted["a"]) is float
    assert converted["b"] == [math.inf, [-math.inf]]


def test_other_objects_unchanged():
    path = Path("a/b")
    assert json_safe({"path": path})["path"] is path


def test_read_json(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": [1, 2.5]}', encoding="utf-8")
    assert read_json(tmp_path / "ok.json", "a record") == {"a": [1, 2.5]}


def test_read_json_missing(tmp_path):
    path = tmp_path / "gone.json"
    with pytest.raises(FileNotFoundError) as error:
        read_json(path, "the record X writes")
    assert str(error.value) == f"{path}: missing; expected the record X writes."
    assert read_json(path, "the record X writes", missing=None) is None
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(LookupError, match="folder.json: missing; expected a record"):
        read_json(tmp_path / "folder.json", "a record", missing=LookupError)


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"a": "\xff"}'])
def test_read_json_invalid(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for error_class in (ValueError, KeyError):
        with pytest.raises(error_class) as error:
            read_json(path, "the record X writes", invalid=error_class)
        message = error.value.args[0]
        assert message.startswith(f"{path}: invalid JSON (")
        assert message.endswith("); expected the record X writes.")
        assert "\n" not in message
        assert error.value.__cause__ is None and error.value.__suppress_context__
