"""Write ``report.json``, ``report.md`` and the resolved ``recipe.toml`` into a result folder."""

from __future__ import annotations

from pathlib import Path

from repfx_deploy.report import strict_json
from repfx_deploy.report.markdown import render_markdown


def write_report(folder: Path, report: dict, *, recipe_toml: str) -> None:
    """The folder is a temporary one being assembled (see ``atomic_dir``), so plain writes are safe here.

    ``report.json`` is strict JSON: a figure that is not a finite number (a NaN loss) is written as ``null``.
    """
    strict_json.write(folder / "report.json", report)
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "recipe.toml").write_text(recipe_toml, encoding="utf-8")
