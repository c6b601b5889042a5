"""Every ```python block of README.md and docs/*.md runs as written, so the documentation cannot rot.

The blocks of one page run in order in one namespace (as a reader would paste them one after another), in a
temporary working directory. Two things differ from a reader's run, both to keep the suite fast:

- Training budgets are capped: ``BaseAlgorithm._setup_learn`` is patched so that ``learn(total_timesteps=N)`` runs
  ``min(N, cap)`` steps (at least one rollout); the cap is ``$SB3_STEPNFT_DOCS_TIMESTEPS`` (default 512).
  ``SB3_STEPNFT_DOCS_TIMESTEPS=0`` removes the cap and runs the pages' full budgets.
- A block preceded by the line ``<!-- skip-test: <reason> -->`` is not run: blocks that need a simulator, a GPU, a
  downloaded checkpoint or hours. The reason is required and the number of such blocks is kept small (below).
  Blocks that import an optional extra that is not installed (transformers) are skipped with that reason.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>.*?)\s*-->\s*$")
MAX_SKIPPED = 8  # blocks that cannot run in CI (simulators, checkpoints); keep this list short
OPTIONAL_MODULES = {"transformers": "the [vla] extra (transformers)"}


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, skip reason or None)`` of every fenced ```python block of a page."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = SKIP.match(previous.strip())
            start, i = i + 1, i + 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if i == len(lines):
                raise AssertionError(f"{path.name}:{start}: a ```python block is never closed")
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n", match.group("reason") if match else None))
        i += 1
    return blocks


def timestep_cap() -> int:
    value = os.environ.get("SB3_STEPNFT_DOCS_TIMESTEPS", "512")
    return int(value)


@pytest.fixture
def capped_learning(monkeypatch):
    cap = timestep_cap()
    original = BaseAlgorithm._setup_learn
    seen: list[int] = []

    def setup_learn(self, total_timesteps, *args, **kwargs):
        seen.append(int(total_timesteps))
        if cap > 0:
            total_timesteps = min(int(total_timesteps), cap)
        return original(self, total_timesteps, *args, **kwargs)

    monkeypatch.setattr(BaseAlgorithm, "_setup_learn", setup_learn)
    return seen


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page, tmp_path, monkeypatch, capped_learning):
    blocks = python_blocks(page)
    runnable = [(line, code) for line, code, reason in blocks if reason is None]
    if not runnable:
        pytest.skip(f"{page.name} has no runnable python block")
    for module, what in OPTIONAL_MODULES.items():
        if any(re.search(rf"\b(import|from) {module}\b", code) for _, code in runnable):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{page.name} needs {what}")
    monkeypatch.chdir(tmp_path)
    threads = th.get_num_threads()
    namespace: dict = {"__name__": "__main__"}
    try:
        for line, code in runnable:
            try:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the block at {page.relative_to(ROOT)}:{line} fails: {error!r}") from error
    finally:
        th.set_num_threads(threads)


def test_skip_markers_have_reasons_and_are_few():
    skipped = [(page.name, line, reason) for page in PAGES for line, _, reason in python_blocks(page) if reason is not None]
    for name, line, reason in skipped:
        assert reason, f"{name}:{line}: a skip-test marker needs a reason (<!-- skip-test: needs ManiSkill -->)"
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped doc blocks ({len(skipped)}): {skipped}"


def test_every_page_has_been_collected():
    names = {p.name for p in PAGES}
    assert {"README.md", "quickstart.md", "stepnft.md", "environments.md"} <= names
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10


def test_extraction_and_skip_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- skip-test: needs a GPU -->\n```python\ny = 2\n```\n")
    assert python_blocks(page) == [(4, "x = 1\n", None), (9, "y = 2\n", "needs a GPU")]
    page.write_text("```python\nx = 1\n")
    with pytest.raises(AssertionError, match="never closed"):
        python_blocks(page)
