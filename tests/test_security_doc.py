"""docs/SECURITY.md names the test behind each promise: every test it names exists."""

from __future__ import annotations

import re

from support.drive import ROOT

NAMED = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def test_every_test_the_security_promises_name_exists() -> None:
    missing: list[str] = []
    file = ""
    for match in NAMED.finditer((ROOT / "docs" / "SECURITY.md").read_text()):
        file = match.group(1) or file
        name = match.group(2) or match.group(3)
        path = ROOT / file
        if not path.exists():
            missing.append(file)
        elif name and f"def {name}(" not in path.read_text():
            missing.append(f"{file}::{name}")
    assert file and not missing, missing
