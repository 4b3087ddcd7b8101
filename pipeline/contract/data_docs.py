"""GX's Data Docs for a run's reports, rendered on request from their stored (sanitised) GX results."""

from __future__ import annotations

import datetime as dt
import html
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.contract.gx_context import gx_state
from pipeline.contract.report import UNEVALUATED, ValidationReport
from pipeline.contract.sanitize import excerpt

DOCS_SITE = "stockpipe"
_GX_RESULT_KEYS = {"success", "results", "suite_name", "suite_parameters", "statistics", "meta"}
# Validation pages a site keeps, newest first (the site is rebuilt per run; a caller adding to it keeps this many).
KEEP_PAGES = 5
# The local files a page or stylesheet loads: href/src attributes and CSS url(...) values.
_REFERENCE = re.compile(r"""(?:\b(?:href|src)\s*=\s*["']([^"']+)["'])|(?:url\(\s*["']?([^"')]+)["']?\s*\))""", re.I)


def render_data_docs(reports: Sequence[ValidationReport], docs_dir: Path, *, replace: bool = True) -> Path:
    """Render GX's Data Docs for these reports into `docs_dir` (replacing what was there); returns index.html.

    Built from the reports' (sanitised, HTML-escaped) GX results in a throwaway context, so it costs nothing at
    validation time and a long-running process keeps no results; meant to be called once per run, into the
    state directory. GX's pages load CSS and scripts from CDNs: for MLflow, use `html_report.render_html`.
    """
    docs_dir = Path(docs_dir)
    if replace:
        shutil.rmtree(docs_dir, ignore_errors=True)
    with gx_state():  # GX is not thread-safe: the throwaway context takes its turn like the shared one
        context = _docs_context(docs_dir)
        stored = (_store(context, number, report) for number, report in enumerate(reports))
        identifiers = [identifier for identifier in stored if identifier is not None]
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=identifiers or None)
    slim_site(docs_dir)
    return docs_dir / "index.html"


def slim_site(docs_dir: Path, keep_pages: int = KEEP_PAGES) -> int:
    """Trim a built site to what its pages show: the newest `keep_pages` validation pages (and the index and other
    pages), and of GX's static folder only the files a remaining page or stylesheet loads. GX copies ~4 MB of fonts,
    animated GIFs and logos into every site, while its pages inline their CSS and load the rest from CDNs (only the
    favicon is local). Returns the bytes removed."""
    docs_dir = Path(docs_dir)
    removed = _drop_old_pages(docs_dir, keep_pages)
    pages = [p for p in docs_dir.rglob("*.html") if p.is_file()]
    needed = _referenced(pages, docs_dir)
    static = docs_dir / "static"
    for path in sorted(static.rglob("*")) if static.is_dir() else []:
        if path.is_file() and path.resolve() not in needed:
            removed += path.stat().st_size
            path.unlink()
    _remove_empty_folders(docs_dir)
    return removed


def _drop_old_pages(docs_dir: Path, keep: int) -> int:
    pages = sorted(
        (p for p in (docs_dir / "validations").rglob("*.html") if p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    removed = 0
    for page in pages[keep:]:
        removed += page.stat().st_size
        page.unlink()
    return removed


def _referenced(pages: list[Path], docs_dir: Path) -> set[Path]:
    """Local files the pages load, and those the loaded stylesheets load in turn, inside the site only."""
    root = docs_dir.resolve()
    needed: set[Path] = set()
    todo = list(pages)
    while todo:
        page = todo.pop()
        for match in _REFERENCE.finditer(page.read_text(errors="replace")):
            target = _local_target(match.group(1) or match.group(2), page.parent)
            if target is None or target in needed or not target.is_relative_to(root) or not target.is_file():
                continue
            needed.add(target)
            if target.suffix.lower() == ".css":
                todo.append(target)
    return needed


def _local_target(reference: str, folder: Path) -> Path | None:
    reference = reference.strip().split("#")[0].split("?")[0]
    if not reference or reference.startswith("//") or re.match(r"^[a-z][a-z0-9+.-]*:", reference, re.I):
        return None  # a CDN, a data: URI, an anchor
    return (folder / reference).resolve()


def _remove_empty_folders(docs_dir: Path) -> None:
    for folder in sorted((p for p in docs_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def _docs_context(docs_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name=DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def _store(context: Any, number: int, report: ValidationReport) -> Any | None:
    """Put one report's GX result in the context's store; returns its identifier (None: nothing to show)."""
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    raw = {k: v for k, v in report.raw.items() if k in _GX_RESULT_KEYS}
    if not raw.get("results"):
        return None
    raw.setdefault("suite_name", "prices")
    raw["results"] = [r for r in raw["results"] if (r.get("expectation_config") or {}).get("type") != UNEVALUATED]
    identifier = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=raw["suite_name"]),
        run_id=RunIdentifier(run_name=_slug(report.subject), run_time=_run_time(raw)),
        batch_identifier=f"{number:02d}-{_slug(report.subject)}",
    )
    context.validation_results_store.store_validation_results(
        suite_validation_result=expectationSuiteValidationResultSchema.load(_docs_ready(raw)),
        suite_validation_result_identifier=identifier,
    )
    return identifier


def _docs_ready(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    out["meta"] = {k: v for k, v in (raw.get("meta") or {}).items() if k != "validation_time"}
    # GX's templates do not escape observed values (a column named <script> would run): escape them here.
    out["results"] = [
        {
            **r,
            "result": _escaped(r.get("result") or {}),
            "exception_info": _escaped(_with_tracebacks(r.get("exception_info") or {})),
        }
        for r in raw.get("results", [])
    ]
    out.setdefault("statistics", {})
    out.setdefault("success", False)
    return out


def _escaped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return html.escape(value, quote=True) if isinstance(value, str) else value


def _with_tracebacks(info: Any) -> Any:
    """GX's renderer needs a traceback string where an exception was raised; the report keeps only the message."""
    if not isinstance(info, dict):
        return info
    if "raised_exception" not in info:
        return {k: _with_tracebacks(v) for k, v in info.items()}
    if info.get("raised_exception") and info.get("exception_traceback") is None:
        return {**info, "exception_traceback": info.get("exception_message") or ""}
    return info


def _run_time(raw: dict[str, Any]) -> dt.datetime:
    stamp = (raw.get("meta") or {}).get("validation_time")
    try:
        return dt.datetime.fromisoformat(stamp) if stamp else dt.datetime.now(dt.UTC)
    except (TypeError, ValueError):
        return dt.datetime.now(dt.UTC)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", excerpt(text, 60)).strip("-") or "report"
