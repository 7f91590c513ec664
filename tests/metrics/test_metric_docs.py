"""The metrics tables of the README ("Evaluation") and docs/architecture.md ("Metrics") list every
built-in registered metric with each parameter of its Config and its default."""
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from albef_plugin.registry import METRICS

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"README.md": "### Evaluation", "docs/architecture.md": "## Metrics"}


def _builtin_metrics():
    """``(name, class)`` of the package's own metrics (names() imports them; plugins' are left out)."""
    classes = [(name, METRICS.get(name)) for name in sorted(METRICS.names())]
    return [(name, cls) for name, cls in classes if cls.__module__.startswith("albef_plugin.")]


def _table_rows(page: str, heading: str):
    """``metric name -> its table row``, from the first table after ``heading``."""
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text[text.index(heading):]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
        elif rows and not line.startswith("|"):
            break  # the end of the first table
    return rows


def _shown(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_the_built_in_metrics_are_found():
    assert {"retrieval", "accuracy", "vqa", "grounding"} <= {name for name, _ in _builtin_metrics()}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_built_in_metric_has_a_row_with_each_parameter_and_default(page):
    rows = _table_rows(page, PAGES[page])
    for name, cls in _builtin_metrics():
        assert name in rows, f"{page}: no row for the registered metric {name!r}"
        params = rows[name].split("|")[2]
        for field in fields(cls.Config):
            default = field.default if field.default is not MISSING else field.default_factory()
            assert f"`{field.name}` {_shown(default)}" in params, \
                f"{page}: the {name!r} row does not list `{field.name}` {_shown(default)}"
