"""Write ``report.json``, ``report.md`` and the resolved ``recipe.toml`` into a result folder."""

from __future__ import annotations

import json
from pathlib import Path

from repfx_deploy.report.markdown import render_markdown


def write_report(folder: Path, report: dict, *, recipe_toml: str) -> None:
    """The folder is a temporary one being assembled (see ``atomic_dir``), so plain writes are safe here."""
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "recipe.toml").write_text(recipe_toml, encoding="utf-8")
