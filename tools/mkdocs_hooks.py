"""mkdocs hooks: what the docs site takes from outside docs/, so nothing is written twice.

* the home page (``index.md``) is README.md, its ``docs/`` link prefixes dropped (the pages sit at
  the site's root);
* ``benchmarks/results/*.json`` are published as ``benchmarks/results/<name>.json``, what the README's
  and ``docs/benchmarks.md``'s links point at.

``mkdocs build --strict`` checks every one of those links (``tests/unit/test_docs.py``).
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def readme_as_home(text: str) -> str:
    """README.md as the site's ``index.md``: links into ``docs/`` become links to the pages themselves."""
    return re.sub(r"\]\(docs/", "](", text)


def on_files(files, config):
    files.append(File.generated(config, "index.md",
                                content=readme_as_home((ROOT / "README.md").read_text(encoding="utf-8"))))
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        files.append(File(path.relative_to(ROOT).as_posix(), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
