"""HTML reports rendered from Jinja2 templates (Jinja2 ships with Airflow), never from f-strings.

Each concern keeps its report templates in a ``templates/`` folder beside the module that renders
them (``include/analytics/templates/``, ``include/data/templates/``, ...); :func:`render` loads
them from there, falling back to ``include/common/templates/`` for the pieces every report
shares (``_report.html.j2``: the page skeleton; ``_table.html.j2``: a table macro).

Autoescaping is on: every value is HTML-escaped unless the caller marks it safe with
:class:`markupsafe.Markup` (the few pre-built fragments: an inlined PNG's data URI is plain
text and needs none). Review texts, SQL and column names therefore cannot inject markup.
An undefined name in a template is an error, not an empty string. The ``frame`` filter renders a
pandas DataFrame with its own ``to_html`` (which escapes every cell), e.g.
``{{ answers | frame(index=False, classes="result") }}``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

COMMON_TEMPLATES = Path(__file__).resolve().parent / "templates"


def frame(df, **to_html) -> Markup:
    """A DataFrame as an HTML table: pandas' ``to_html`` with ``border=0``, cells escaped (never ``escape=False``)."""
    return Markup(df.to_html(border=0, **{**to_html, "escape": True}))


@cache
def environment(folder: str) -> jinja2.Environment:
    """The Jinja2 environment of one templates folder (cached: templates compile once per process)."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(folder), jinja2.FileSystemLoader(str(COMMON_TEMPLATES))]),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
    env.filters["frame"] = frame
    return env


def render(folder: Path | str, name: str, **context) -> str:
    """Render template ``name`` of ``folder`` with ``context``; ``generated`` (UTC, seconds) is always set."""
    context.setdefault("generated", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return environment(str(folder)).get_template(name).render(**context)
