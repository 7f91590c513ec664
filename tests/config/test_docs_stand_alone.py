"""The README and docs/ stand alone: a user's clone has no team folders next to it."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_do_not_point_outside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) >= 2
    for page in pages:
        text = page.read_text(encoding="utf-8")
        outside = re.findall(r"\.\./shared|/work/\w+", text)
        assert not outside, f"{page.relative_to(ROOT)} points outside the repository: {outside}"
