"""No module in `sane_hf/` grows past ~700 lines unless it is one cohesive abstraction, listed below with the reason
(issue 19; docs/architecture.md#packages). A file split by job is easier to read than one that does four jobs."""

from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "sane_hf"
MAX_LINES = 700
# path relative to sane_hf/ -> why it stays one file
ALLOWED = {
    "models/sane/modeling_sane.py": (
        "transformers' one-model-one-file rule: the whole model (and its pretraining loss) is copied verbatim into "
        "every SANE Hub repository as remote code"
    ),
    "data/zoo.py": (
        "one abstraction: the ZooReader contract (sorted listing, lazy loading, filtering and its report) and its "
        "three formats, which fill in the same four hooks"
    ),
    "tokenization/layout.py": (
        "one abstraction: TokenLayout (tokenize, detokenize, serialize); it travels into every SANE Hub repository "
        "with the weight processor, so a split would add remote-code files to each of them"
    ),
}


def _line_counts(package: Path) -> dict[str, int]:
    return {
        path.relative_to(package).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(package.rglob("*.py"))
    }


def _oversized(counts: dict[str, int], allowed: dict[str, str], limit: int) -> list[str]:
    return [f"{name}: {lines} lines" for name, lines in counts.items() if lines > limit and name not in allowed]


def test_no_module_is_over_the_limit_unless_allowed():
    oversized = _oversized(_line_counts(PACKAGE), ALLOWED, MAX_LINES)
    assert not oversized, (
        f"modules over {MAX_LINES} lines; split them by job, or add them to ALLOWED with the reason:\n"
        + "\n".join(oversized)
    )


def test_the_allow_list_is_current():
    """An allowed file that no longer exists, or has shrunk under the limit, leaves the list."""
    counts = _line_counts(PACKAGE)
    stale = [name for name in ALLOWED if counts.get(name, 0) <= MAX_LINES]
    assert not stale, f"remove from ALLOWED (missing or under {MAX_LINES} lines): {stale}"


def test_the_count_sees_a_long_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * 701)
    (tmp_path / "short.py").write_text("x = 1\n" * 700)
    counts = _line_counts(tmp_path)
    assert counts == {"short.py": 700, "sub/long.py": 701}
    assert _oversized(counts, {}, MAX_LINES) == ["sub/long.py: 701 lines"]
    assert _oversized(counts, {"sub/long.py": "reason"}, MAX_LINES) == []
