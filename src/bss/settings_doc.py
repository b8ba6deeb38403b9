"""docs/settings.md, generated from bss.settings.Settings: every BSS_* setting with its type,
default and description.

Regenerate after adding or changing a setting:  .venv/bin/python -m bss.settings_doc
(tests/test_docs.py fails while docs/settings.md differs from what this writes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from bss.settings import Settings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
REGENERATE = ".venv/bin/python -m bss.settings_doc"
HEADER = f"""# Settings

Every setting is an environment variable `BSS_<NAME>` (read once at start). This file is
generated from `src/bss/settings.py`; do not edit it by hand: run `{REGENERATE}`.

| variable | type | default | what it does |
|---|---|---|---|
"""


def _type_name(field: FieldInfo) -> str:
    text = getattr(field.annotation, "__name__", None) or str(field.annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if value == "":
        return '`""`'
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name} has no description: give it Field(description=...)")
        rows.append(
            f"| `BSS_{name.upper()}` | {_cell(_type_name(field))} | {_default(field)} "
            f"| {_cell(field.description)} |"
        )
    return HEADER + "\n".join(rows) + "\n"


def main() -> None:
    DOC_PATH.write_text(render())
    sys.stdout.write(f"wrote {DOC_PATH}\n")


if __name__ == "__main__":
    main()
