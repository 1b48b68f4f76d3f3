"""The README is part of the product: its two commands and its configuration table stay true."""

from __future__ import annotations

import re
from pathlib import Path

from vidserve.settings import ENV_VARS, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_is_make_run_and_make_test() -> None:
    text = README.read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", quick_start, flags=re.M)
    assert commands == ["make run", "make test"]


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    text = README.read_text()
    assert markdown_table() in text, "regenerate the table with `python -m vidserve.settings`"
    for var, *_ in ENV_VARS:
        assert f"`{var}`" in text
