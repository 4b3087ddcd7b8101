"""GX's Data Docs site kept slim: of GX's ~4 MB of static files only what a page loads, and only the newest
validation pages of a site that is added to."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

from pipeline.contract import data_docs
from pipeline.contract.data_docs import render_data_docs, slim_site
from pipeline.contract.runner import validate_prices

AS_OF = dt.date(2017, 11, 10)
LOCAL_REFERENCE = re.compile(r"""(?:href|src)\s*=\s*["'](?![a-z]+:|//|#)([^"'#?]+)""", re.I)


def site_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def loaded(site: Path) -> set[tuple[str, str]]:
    """(page, reference) of every local file a page loads that is there."""
    found = set()
    for page in site.rglob("*.html"):
        for reference in LOCAL_REFERENCE.findall(page.read_text()):
            if (page.parent / reference).resolve().is_file():
                found.add((str(page.relative_to(site)), reference))
    return found


def test_a_rendered_site_keeps_every_file_its_pages_load_and_nothing_else(
    tmp_path, msft_slice, price_suite, monkeypatch
):
    report = validate_prices(msft_slice, subject="MSFT", suite_definition=price_suite, as_of=AS_OF, min_rows=100)
    with monkeypatch.context() as unslimmed:
        unslimmed.setattr(data_docs, "slim_site", lambda *args, **kwargs: 0)
        render_data_docs([report], tmp_path / "full")
    assert sum(site_files(tmp_path / "full").values()) > 3_000_000, "what GX writes: fonts, GIFs, logos"
    shutil.copytree(tmp_path / "full", tmp_path / "slim")
    removed = slim_site(tmp_path / "slim")

    files = site_files(tmp_path / "slim")
    assert sum(files.values()) < 300_000 and removed > 3_000_000, files
    assert [name for name in files if name.startswith("static/")] == ["static/images/favicon.ico"]
    assert loaded(tmp_path / "slim") == loaded(tmp_path / "full"), "every file a page loaded, it still loads"
    assert {name for name in files if name.endswith(".html")} == {
        name for name in site_files(tmp_path / "full") if name.endswith(".html")
    }
    index = render_data_docs([report], tmp_path / "rendered")  # what the pipeline calls: slim from the start
    assert site_files(index.parent).keys() == files.keys()


def write(path: Path, text: str = "x", age_seconds: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = 1_800_000_000 - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_only_the_newest_pages_stay_with_what_they_and_their_stylesheets_load(tmp_path):
    site = tmp_path / "site"
    page = '<link href="../../static/styles/page.css"><img src="../../static/images/used.png?v=1">'
    for i in range(7):
        write(site / "validations" / f"run-{i}" / "page.html", page, age_seconds=i)
    write(site / "index.html", '<link rel="icon" href="./static/images/favicon.ico"><a href="https://cdn.x/y.css">')
    write(site / "static" / "styles" / "page.css", "body { background: url('../fonts/used.woff') }")
    for name in ("fonts/used.woff", "images/used.png", "images/favicon.ico", "fonts/unused.otf", "images/big.gif"):
        write(site / "static" / name)
    write(tmp_path / "outside.txt", "a page may not keep anything outside its site")

    slim_site(site, keep_pages=5)
    kept = set(site_files(site))
    assert {f"validations/run-{i}/page.html" for i in range(5)} <= kept
    assert not {"validations/run-5/page.html", "validations/run-6/page.html"} & kept
    assert {"static/fonts/used.woff", "static/images/used.png", "static/images/favicon.ico"} <= kept
    assert not {"static/fonts/unused.otf", "static/images/big.gif"} & kept
    assert not (site / "validations" / "run-6").exists(), "emptied folders go too"
    assert (tmp_path / "outside.txt").is_file()
    assert slim_site(site, keep_pages=5) == 0, "a slim site stays as it is"
