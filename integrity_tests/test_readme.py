"""The README is the front door: its first two commands are what a newcomer and CI run."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def first_two_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block, "the README opens with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()][:2]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    demo, tests = first_two_commands()
    assert demo.endswith("integrity demo") and tests.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci
    # Both commands set up the same environment, so either one works first on a fresh machine.
    assert demo.rsplit("&&", 1)[0] == tests.rsplit("&&", 1)[0]


def test_the_readme_is_short_and_its_links_resolve() -> None:
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", README)
    assert links, "the README maps the docs"
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing
