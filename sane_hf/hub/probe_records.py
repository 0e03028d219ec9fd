"""The records of a property-prediction run (`results.json` of `sane-predict`) as its two readers need them: the
report (`probing/report.py`) and the SANE model card's `model-index` (`hub/sane_cards.py`).

They live here, below both, because the card writer is also used by pretraining, which property prediction builds
on: with these helpers in `probing`, `hub` would import a later stage (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..constants import VALIDATION_SPLIT, split_scores


METHOD_W, METHOD_SW = "W", "s(W)"
METHOD_FINETUNED = "SANE fine-tuned"
# Column order of the main table (SANE §5: W, s(W), SANE); the rest follow in the detailed table.
MAIN_METHODS = (METHOD_W, METHOD_SW, "SANE mean", METHOD_FINETUNED)


def find_record(records: Sequence[Mapping[str, Any]], prop: str, method: str, scaling: str | None) -> Mapping | None:
    """The first record of `prop` and `method` (and `scaling`, unless None), or None."""
    for record in records:
        if (
            record["property"] == prop
            and record["method"] == method
            and (scaling is None or record["scaling"] == scaling)
        ):
            return record
    return None


def main_scaling(records: Sequence[Mapping[str, Any]]) -> str:
    """The feature scaling of the main comparison: upstream's unscaled features when they were probed."""
    return "none" if any(r["scaling"] == "none" for r in records) else "standardize"


def main_records(results: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """The main comparison: `{property: {method: record}}` for the `MAIN_METHODS` present, one record each (the
    main scaling where a method has it; e.g. classifiers only run on standardized features). The model card's
    `model-index` is built from it too."""
    records = results["records"]
    scaling = main_scaling(records)
    table: dict[str, dict[str, Mapping[str, Any]]] = {}
    for prop in dict.fromkeys(r["property"] for r in records):
        row = {}
        for method in MAIN_METHODS:
            record = find_record(records, prop, method, scaling if method != METHOD_FINETUNED else None)
            record = record or find_record(records, prop, method, None)
            if record is not None:
                row[method] = record
        table[prop] = row
    return table


def best_record(records: Sequence[Mapping[str, Any]], prop: str, method: str = "SANE") -> Mapping[str, Any] | None:
    """The row of `prop` with the best validation score among `method`'s rows (any scaling); `"SANE"` takes every
    SANE row (each pooling and the fine-tuned encoder). Rows are never chosen on test."""
    rows = [
        r
        for r in records
        if r["property"] == prop
        and (r["method"].startswith("SANE") if method == "SANE" else r["method"] == method)
        and split_scores(r["scores"]).get(VALIDATION_SPLIT) is not None
        and r["scores"].get("test") is not None
    ]
    # Records of earlier versions (results.json) keyed the validation score "val".
    return max(rows, key=lambda r: split_scores(r["scores"])[VALIDATION_SPLIT], default=None)
