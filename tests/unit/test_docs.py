"""The docs site builds with no broken link, and the README stays a short front page that links true."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 200
# [text](target) and ![alt](target); the target ends at the first space or ")"
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks and inline code, where brackets are not links."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", markdown)


def _relative_links(markdown: str) -> list[str]:
    targets = _LINK.findall(_prose(markdown))
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t)]


def test_mkdocs_strict_build_succeeds(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the home page is the README; the benchmark results it links are published with the site
    assert (site / "index.html").is_file()
    assert (site / "benchmarks" / "results" / "pipeline_e2e.json").is_file()
    assert (site / "profiles-and-params.html").is_file()


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_relative_link_in_readme_points_at_an_existing_file():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert links, "found no relative link in README.md: the link pattern is broken"
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_links_every_benchmark_result():
    linked = {t for t in _relative_links(README.read_text(encoding="utf-8")) if t.startswith("benchmarks/results/")}
    results = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert results - linked == set(), f"README.md does not link {sorted(results - linked)}"


def test_link_finder_skips_code_and_urls():
    text = "[a](docs/a.md) `[b](no.md)` [c](https://x.org) [d](#here)\n```\n[e](no2.md)\n```\n![f](img/f.png)"
    assert _relative_links(text) == ["docs/a.md", "img/f.png"]
