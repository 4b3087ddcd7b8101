"""Browser check of the UIs over a real run: screenshots of MLflow's and Prefect's pages for the README.

    .venv/bin/python scripts/screenshots.py [--state DIR] [--out docs/screenshots] [--keep]

In a temporary directory it runs `stockpipe run` with the real defaults (or copies DIR/.stockpipe there with
--state), starts `stockpipe ui` on free ports and `stockpipe serve` against that Prefect server (so the `daily`
deployment and its custom-run form exist), then drives headless Chromium (Debian's, `bash scripts/install-chromium.sh`)
through Playwright to each page, waits for its real content, checks the text a reader should see there and saves a
PNG. The pictures replace those in --out only when every page passed; otherwise it exits 1 naming what was missing
and says where the pictures it did take are. Everything it started is stopped, by process group, however it ends.
Not part of the default CI run: it needs Chromium and takes a few minutes (about 1.5 of them for the run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.local_server import answers, die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: `make screenshots` runs this with .venv/bin/python
STOCKPIPE = BIN / "stockpipe" if (BIN / "stockpipe").exists() else ROOT / ".venv" / "bin" / "stockpipe"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TICKER = "MSFT"
EXPERIMENT = "stockpipe"
SUMMARY_KEY = "daily-pipeline-summary"
FLOW, DEPLOYMENT = "daily-pipeline", "daily"
WIDTH, HEIGHT = 1400, 900
RUN_TIMEOUT = 1200  # the real run takes ~1.5 min on 2 cores
START_TIMEOUT = 180
PAGE_TIMEOUT = 60_000  # ms, for content to appear
# Loopback only: no HTTP proxy from the environment in between.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes ---------------------------------------------------------------------------------------------------


def _own_group_dies_with_us() -> None:
    """In the child, before exec: its own process group (stopped as one), and SIGTERM when this script dies."""
    os.setsid()
    die_with_parent()


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Children:
    logs: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> Child:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_own_group_dies_with_us,
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def stop_all(self, grace: float = 25) -> None:
        """SIGTERM to each child's whole process group, then SIGKILL to what is left after `grace` seconds."""
        for child in reversed(self.started):
            _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.started):
            while time.monotonic() < deadline:
                child.process.poll()  # reap the leader, so only live members keep the group alive
                if not _group_alive(child.process.pid):
                    break
                time.sleep(0.2)
            if _group_alive(child.process.pid):
                say(f"{child.name}: still running after {grace:.0f}s, killing its process group")
                _signal_group(child.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=10)
        self.started.clear()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any stockpipe, Prefect or MLflow setting: the pictures show the defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "PREFECT_", "MLFLOW_"))}
    env.update(extra)
    return env


# -- HTTP --------------------------------------------------------------------------------------------------------


def http_json(url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_until(what: str, ready: Callable[[], bool], children: list[Child], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for child in children:
            if child.process.poll() is not None:
                raise CheckFailed(f"{child.name} exited ({child.process.returncode}) before {what}:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


class CheckFailed(RuntimeError):
    pass


# -- the state ---------------------------------------------------------------------------------------------------


def state_source(state: Path) -> Path:
    source = state if state.name == ".stockpipe" else state / ".stockpipe"
    if not (source / "mlflow.db").is_file():
        raise CheckFailed(f"--state {state}: no .stockpipe/mlflow.db there (run `make run` first)")
    return source


def make_state(work: Path, state: Path | None, children: Children) -> None:
    """A fresh `stockpipe run` in `work`, or a copy of an existing state there (the original is never written)."""
    if state is not None:
        source = state_source(state)
        say(f"copying {source} into {work}")
        shutil.copytree(source, work / ".stockpipe", symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
        return
    say(f"running `stockpipe run` with the default settings in {work} (about 1.5 min)")
    started = time.monotonic()
    run = children.start("run", [str(STOCKPIPE), "run"], work, clean_environment())
    try:
        code = run.process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`stockpipe run` did not finish within {RUN_TIMEOUT}s:\n{run.tail()}") from None
    if code != 0:
        raise CheckFailed(f"`stockpipe run` exited {code}:\n{run.tail()}")
    say(f"run done in {time.monotonic() - started:.0f}s")


@dataclass
class Subjects:
    """What the pages show, read from the servers' APIs, so the check follows whatever state it is given."""

    mlflow: str
    prefect: str
    experiment_id: str
    run_id: str
    run_name: str
    model_name: str
    flow_run_id: str
    flow_run_name: str
    artifact_id: str
    deployment_id: str
    ticker: str = TICKER
    # The ticker's longest live record (a run per champion version), when a replay has built one.
    live_run_id: str | None = None
    live_run_name: str | None = None


def find_live_record(mlflow: str, experiment_id: str, ticker: str) -> tuple[str, str] | None:
    runs = http_json(
        f"{mlflow}/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment_id],
            "filter": f"tags.ticker = '{ticker}' and tags.role = 'live_record'",
            "max_results": 50,
        },
    ).get("runs", [])
    scored = {
        r["info"]["run_id"]: next((m["step"] for m in r["data"].get("metrics", []) if m["key"] == "live_sessions"), 0)
        for r in runs
    }
    if not scored or max(scored.values()) < 2:
        return None
    run = next(r for r in runs if r["info"]["run_id"] == max(scored, key=scored.__getitem__))
    return run["info"]["run_id"], next(t["value"] for t in run["data"]["tags"] if t["key"] == "mlflow.runName")


def find_subjects(mlflow: str, prefect: str, ticker: str) -> Subjects:
    experiment = http_json(
        f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.parse.quote(EXPERIMENT)}"
    )["experiment"]
    runs = http_json(
        f"{mlflow}/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.ticker = '{ticker}' and tags.role = 'daily' and attributes.status = 'FINISHED'",
            "order_by": ["attributes.start_time DESC"],
            "max_results": 50,
        },
    ).get("runs", [])
    trained = [r for r in runs if any(m["key"] == "loss" for m in r["data"].get("metrics", []))]
    if not trained:
        raise CheckFailed(f"no finished daily run of {ticker} with a `loss` curve in experiment {EXPERIMENT!r}")
    run = trained[0]
    run_name = next(t["value"] for t in run["data"]["tags"] if t["key"] == "mlflow.runName")
    artifacts = http_json(
        f"{prefect}/api/artifacts/filter",
        {"artifacts": {"key": {"any_": [SUMMARY_KEY]}}, "sort": "CREATED_DESC", "limit": 1},
    )
    if not artifacts:
        raise CheckFailed(f"no Prefect artifact {SUMMARY_KEY!r}: no flow run of {FLOW} published its summary")
    flow_run = http_json(f"{prefect}/api/flow_runs/{artifacts[0]['flow_run_id']}")
    deployment = http_json(f"{prefect}/api/deployments/name/{FLOW}/{DEPLOYMENT}")
    return Subjects(
        mlflow=mlflow,
        prefect=prefect,
        experiment_id=experiment["experiment_id"],
        run_id=run["info"]["run_id"],
        run_name=run_name,
        model_name=f"stockpipe-{ticker}",
        flow_run_id=flow_run["id"],
        flow_run_name=flow_run["name"],
        artifact_id=artifacts[0]["id"],
        deployment_id=deployment["id"],
        ticker=ticker,
        **live_subjects(find_live_record(mlflow, experiment["experiment_id"], ticker)),
    )


def live_subjects(found: tuple[str, str] | None) -> dict[str, str]:
    return {} if found is None else {"live_run_id": found[0], "live_run_name": found[1]}


# -- the pages ---------------------------------------------------------------------------------------------------


@dataclass
class Shot:
    file: str
    what: str
    size: tuple[int, int] = (WIDTH, HEIGHT)
    missing: list[str] = field(default_factory=list)
    error: str | None = None


def expect_text(page: Any, shot: Shot, *texts: str | re.Pattern) -> None:
    """Each text must be on screen, inside the picture (not scrolled away); a compiled pattern for exact or
    alternative wording. A plain string matches case-insensitively, as a substring."""
    viewport = page.viewport_size or {"width": WIDTH, "height": HEIGHT}
    for text in texts:
        matches = page.get_by_text(text)
        with contextlib.suppress(Exception):
            matches.first.wait_for(state="visible", timeout=5_000)
        if not any(_in_picture(m, viewport) for m in matches.all()[:50]):
            shot.missing.append(text.pattern if isinstance(text, re.Pattern) else text)


def _in_picture(locator: Any, viewport: dict[str, int]) -> bool:
    try:
        box = locator.bounding_box(timeout=1_000)
    except Exception:
        return False
    return bool(
        box
        and box["width"] > 0
        and box["height"] > 0
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= viewport["width"]
        and box["y"] + box["height"] <= viewport["height"]
    )


def settle(page: Any, seconds: float = 1.5) -> None:
    """Let requests finish and charts draw (the UIs poll, so network-idle may never come: it is not required)."""
    with contextlib.suppress(Exception):
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.wait_for_timeout(int(seconds * 1000))


def close_mlflow_assistant(page: Any) -> None:
    """MLflow 3.17 opens its assistant panel beside every page; it hides half the runs table."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    with contextlib.suppress(Exception):
        close.wait_for(state="visible", timeout=3_000)
        close.click()
        page.wait_for_timeout(300)


def set_mlflow_columns(page: Any, shot: Shot, show: list[str], hide: list[str]) -> None:
    """Through the runs table's column selector, as a person would: search each column, tick or untick it."""
    page.get_by_role("button", name="Columns").click()
    selector = page.locator("[data-component-id='mlflow.experiment_page.runs_table.column_selector']")
    search = selector.get_by_placeholder("Search columns")
    search.wait_for(timeout=PAGE_TIMEOUT)
    for name, wanted in [*((n, False) for n in hide), *((n, True) for n in show)]:
        search.fill(name)
        node = selector.locator(".du-bois-light-tree-treenode").filter(has_text=re.compile(f"^{re.escape(name)}$"))
        try:
            node.first.wait_for(timeout=5_000)
        except Exception:
            if wanted:
                shot.missing.append(f"column {name!r} in the column selector")
            continue
        checkbox = node.first.locator(".du-bois-light-tree-checkbox")
        checked = "du-bois-light-tree-checkbox-checked" in (checkbox.get_attribute("class") or "")
        if checked != wanted:
            checkbox.click()
            page.wait_for_timeout(200)
    search.fill("")
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)


def widen_mlflow_columns(page: Any, widths: dict[str, int]) -> None:
    """Drag each column's right edge (the grid's resize handle) until it is that many px wide: the default 100 px
    cuts metric names and values short."""
    for column, width in widths.items():
        cell = page.locator(f".ag-header-cell[col-id='{column}']").first
        handle = cell.locator(".ag-header-cell-resize")
        with contextlib.suppress(Exception):
            cell_box, handle_box = cell.bounding_box(timeout=3_000), handle.bounding_box(timeout=3_000)
            if not cell_box or not handle_box or cell_box["width"] >= width:
                continue
            # The handle's right half lies under the next header, which takes the events there: grab its left half.
            x, y = handle_box["x"] + 2, handle_box["y"] + handle_box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + (width - cell_box["width"]), y, steps=10)
            page.mouse.up()
            page.wait_for_timeout(200)
    page.mouse.move(WIDTH / 2, HEIGHT - 20)  # no tooltip left over the table


def mlflow_runs(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.mlflow}/#/experiments/{s.experiment_id}?workflowType=machine_learning")
    page.get_by_text(s.run_name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    close_mlflow_assistant(page)
    metrics = ["challenger_rmse", "u2", "dm_pvalue", "challenger_coverage_80"]
    set_mlflow_columns(page, shot, show=[*metrics, "decision"], hide=["Dataset", "Source", "Models"])
    widths = {"challenger_rmse": 132, "u2": 132, "dm_pvalue": 132, "challenger_coverage_80": 155}
    widen_mlflow_columns(page, {f"metrics.`{m}`": widths[m] for m in metrics})
    settle(page)
    expect_text(page, shot, s.run_name, *metrics, re.compile(r"^(promoted|kept)$"))


def mlflow_run(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.mlflow}/#/experiments/{s.experiment_id}/runs/{s.run_id}?workflowType=machine_learning")
    page.get_by_text(s.run_name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    close_mlflow_assistant(page)
    page.get_by_text("Description", exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    more = page.get_by_text("Show more", exact=True)
    with contextlib.suppress(Exception):
        more.first.click(timeout=3_000)
    settle(page)
    expect_text(page, shot, s.run_name, "Description", "test RMSE")
    # The description is Markdown: its first word is bold, so it renders as <strong>, not as asterisks.
    if not page.locator("strong", has_text=re.compile(r"^(Promoted|Kept)$")).count():
        shot.missing.append("the description's bold **Promoted** / **Kept** rendered as Markdown")


def run_metric_charts(
    page: Any, s: Subjects, run_id: str, run_name: str, search_for: str, shown: str, charts: int
) -> bool:
    """Open a run's Model metrics, filter the charts by `search_for`, wait for `shown` and `charts` drawn line charts
    (Plotly's SVG with a trace path in each card); False when the charts were not drawn."""
    page.goto(f"{s.mlflow}/#/experiments/{s.experiment_id}/runs/{run_id}/model-metrics?workflowType=machine_learning")
    page.get_by_text(run_name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    close_mlflow_assistant(page)
    search = page.get_by_placeholder("Search metric charts")
    search.wait_for(timeout=PAGE_TIMEOUT)
    search.fill(search_for)
    page.get_by_text(shown, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    try:
        page.wait_for_function(
            f"() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= {charts}",
            timeout=PAGE_TIMEOUT,
        )
        drawn = True
    except Exception:
        drawn = False
    settle(page)
    return drawn


def mlflow_run_metrics(page: Any, s: Subjects, shot: Shot) -> None:
    if not run_metric_charts(page, s, s.run_id, s.run_name, "loss", "val_loss", 2):
        shot.missing.append("the loss and val_loss line charts")
    expect_text(page, shot, s.run_name, "Model metrics", "val_loss", re.compile(r"^loss$"))


def mlflow_live_record(page: Any, s: Subjects, shot: Shot) -> None:
    if s.live_run_id is None or s.live_run_name is None:
        raise CheckFailed("no live-record run with two or more scored sessions: give --state a replay's home")
    if not run_metric_charts(page, s, s.live_run_id, s.live_run_name, "_60", "live_coverage_80_60", 4):
        shot.missing.append("the live record's line charts")
    expect_text(page, shot, s.live_run_name, "live_coverage_80_60", "live_u2_60")


def mlflow_registry(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.mlflow}/#/models/{urllib.parse.quote(s.model_name)}?workflowType=machine_learning")
    page.get_by_text("Version 1", exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    close_mlflow_assistant(page)
    with contextlib.suppress(Exception):  # fold the model's tags, so the versions table fits the picture
        page.get_by_text("Tags", exact=True).first.click(timeout=3_000)
    settle(page)
    expect_text(page, shot, s.model_name, "Version 2", "Version 1", "champion", "previous")


def prefect_flow_run(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.prefect}/runs/flow-run/{s.flow_run_id}?tab=Artifacts")
    page.get_by_text(s.flow_run_name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text(SUMMARY_KEY, exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    expect_text(
        page,
        shot,
        s.flow_run_name,
        "Completed",
        SUMMARY_KEY,
        re.compile(r"^table$", re.I),
        f"mlflow-run-{s.ticker.lower()}",
    )


def prefect_artifact(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.prefect}/artifacts/artifact/{s.artifact_id}")  # where the flow run's artifact card leads
    page.get_by_text("challenger RMSE", exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    expect_text(
        page,
        shot,
        s.flow_run_name,
        re.compile(f"^{SUMMARY_KEY}$"),
        "challenger RMSE",
        "coverage 95%",
        re.compile(f"^{s.ticker}$"),
        re.compile("^(promoted|kept)$"),
    )


def prefect_artifact_live(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.prefect}/artifacts/artifact/{s.artifact_id}")
    page.get_by_text("live sessions", exact=True).first.wait_for(timeout=PAGE_TIMEOUT)
    # The table scrolls sideways: its last live-record column into the picture brings the others with it.
    page.get_by_text("live Kupiec p 80%", exact=True).first.scroll_into_view_if_needed()
    settle(page)
    expect_text(page, shot, "live sessions", "live U2 (60)", "live coverage 80% (60)", "live Kupiec p 80%")


def prefect_custom_run(page: Any, s: Subjects, shot: Shot) -> None:
    page.goto(f"{s.prefect}/deployments/deployment/{s.deployment_id}")
    page.get_by_role("button", name="Run", exact=True).first.click()  # as a person does: Run, then Custom run
    page.get_by_text("Custom run", exact=True).last.click()
    page.wait_for_url(re.compile(r"/run(\?|$)"), timeout=PAGE_TIMEOUT)
    page.get_by_text(re.compile("Training epochs")).first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    expect_text(
        page,
        shot,
        DEPLOYMENT,
        "Parameters",
        re.compile("Tickers to run"),
        re.compile("Training epochs"),
        re.compile("Run as if today were this date"),
        re.compile("Retrain even when"),
        re.compile("Start from the champion's weights"),
    )


PAGES: list[tuple[Shot, Callable[[Any, Subjects, Shot], None]]] = [
    (Shot("mlflow-runs.png", "MLflow: the experiment's runs table with metric columns"), mlflow_runs),
    (Shot("mlflow-run.png", "MLflow: a run's overview with its Markdown description"), mlflow_run),
    (Shot("mlflow-run-metrics.png", "MLflow: the run's loss and val_loss per epoch"), mlflow_run_metrics),
    (Shot("mlflow-registry.png", "MLflow: the registered model's versions and aliases"), mlflow_registry),
    # Only over a replay's state (--state), where a champion has a live record to draw.
    (Shot("mlflow-live-record.png", "MLflow: a version's live record, step = scored session"), mlflow_live_record),
    # Taller: the artifact cards sit below the run's timeline.
    (Shot("prefect-flow-run.png", "Prefect: the flow run with its artifacts", (WIDTH, 1100)), prefect_flow_run),
    # Wider: the table scrolls sideways; this shows every column but the long `reason`, the last.
    (Shot("prefect-artifact.png", "Prefect: the flow run's summary table", (1650, 620)), prefect_artifact),
    # Over a replay's state: the same table scrolled to the live record's columns.
    (Shot("prefect-artifact-live.png", "Prefect: the live-record columns", (1650, 620)), prefect_artifact_live),
    # Taller: every parameter of the form with its description.
    (Shot("prefect-custom-run.png", "Prefect: the deployment's custom-run form", (WIDTH, 1500)), prefect_custom_run),
]


# These two show a live record, which only a replay's state (--state) has.
DEFAULT_PAGES = {shot.file for shot, _ in PAGES} - {"mlflow-live-record.png", "prefect-artifact-live.png"}


def take_screenshots(subjects: Subjects, into: Path, only: set[str] | None = None) -> list[Shot]:
    from playwright.sync_api import sync_playwright  # the dev extra; imported late so --help works without it

    shots = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="stockpipe-chromium-") as profile:
        # A fresh profile each time, and Debian's Chromium: Playwright's own browser download is never used.
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": WIDTH, "height": HEIGHT},
            color_scheme="light",
            locale="en-US",
            timezone_id="UTC",
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT)
            for template, visit in PAGES:
                if only is not None and template.file not in only:
                    continue
                shot = Shot(template.file, template.what, template.size)
                started = time.monotonic()
                page.set_viewport_size({"width": shot.size[0], "height": shot.size[1]})
                try:
                    visit(page, subjects, shot)
                except Exception as exc:
                    shot.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(into / shot.file))
                status = (
                    "ok"
                    if not (shot.missing or shot.error)
                    else "MISSING " + "; ".join([*shot.missing, *([shot.error] if shot.error else [])])
                )
                say(f"{shot.file}: {status} ({time.monotonic() - started:.0f}s)")
                shots.append(shot)
        finally:
            context.close()
    return shots


# -- main --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stopped_on_sigterm() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so the `finally` that stops the children always runs."""

    def unwind(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, unwind) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check(args: argparse.Namespace) -> int:
    if not Path(CHROMIUM).exists():
        raise CheckFailed(f"no Chromium at {CHROMIUM}: run `bash scripts/install-chromium.sh` first")
    if not STOCKPIPE.exists():
        raise CheckFailed(f"no {STOCKPIPE}: run `make install` first")
    if args.state is not None:
        state_source(args.state)
    begun = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="stockpipe-screenshots-"))
    (work / "logs").mkdir()
    children = Children(work / "logs")
    keep = args.keep
    try:
        make_state(work, args.state, children)

        mlflow_port, prefect_port = free_port(), free_port()
        mlflow, prefect = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
        say(f"starting `stockpipe ui`: MLflow on {mlflow}, Prefect on {prefect}")
        ui = children.start(
            "ui",
            [str(STOCKPIPE), "ui", "--port", str(mlflow_port), "--prefect-port", str(prefect_port)],
            work,
            clean_environment(),
        )
        wait_until("the MLflow UI answered", lambda: answers(f"{mlflow}/health", timeout=3), [ui])
        wait_until("the Prefect server answered", lambda: answers(f"{prefect}/api/health", timeout=3), [ui])

        say("starting `stockpipe serve` against that Prefect server (the `daily` deployment)")
        (work / "serve-prefect-home").mkdir()
        serve = children.start(
            "serve",
            [str(STOCKPIPE), "serve"],
            work,
            clean_environment(PREFECT_API_URL=f"{prefect}/api", PREFECT_HOME=str(work / "serve-prefect-home")),
        )
        wait_until(
            "the `daily` deployment was registered",
            lambda: answers(f"{prefect}/api/deployments/name/{FLOW}/{DEPLOYMENT}", timeout=3),
            [ui, serve],
        )

        subjects = find_subjects(mlflow, prefect, args.ticker)
        say(f"pages of MLflow run {subjects.run_name!r} and Prefect flow run {subjects.flow_run_name!r}")
        shots_dir = work / "shots"
        shots_dir.mkdir()
        shots = take_screenshots(subjects, shots_dir, set(args.pages) if args.pages else DEFAULT_PAGES)

        failed = [s for s in shots if s.missing or s.error]
        if failed:
            kept = Path(tempfile.mkdtemp(prefix="stockpipe-screenshots-failed-"))
            for png in shots_dir.glob("*.png"):
                shutil.move(str(png), kept / png.name)
            print("\nbrowser check FAILED; nothing in --out was replaced. Missing:", file=sys.stderr)
            for s in failed:
                for item in [*s.missing, *([s.error] if s.error else [])]:
                    print(f"  {s.file} ({s.what}): {item}", file=sys.stderr)
            print(f"the pictures taken are in {kept}", file=sys.stderr)
            keep = True  # the servers' logs say why
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for s in shots:
            shutil.copyfile(shots_dir / s.file, args.out / s.file)
        say(
            f"all {len(shots)} pages passed in {time.monotonic() - begun:.0f}s; saved in {args.out}: "
            + ", ".join(f"{s.file} ({(args.out / s.file).stat().st_size // 1024} KB)" for s in shots)
        )
        return 0
    except CheckFailed:
        keep = True
        raise
    finally:
        children.stop_all()
        if keep:
            say(f"state and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="use a copy of DIR/.stockpipe (e.g. the project's, after `make run`) instead of a fresh run",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go (docs/screenshots)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory and the logs")
    parser.add_argument("--ticker", default=TICKER, help=f"whose runs and pages to show ({TICKER})")
    parser.add_argument(
        "--pages",
        nargs="+",
        metavar="FILE",
        choices=[shot.file for shot, _ in PAGES],
        help="only these pages (default: all but the two live-record pages, which need a replay's --state)",
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    try:
        with stopped_on_sigterm():
            return check(args)
    except CheckFailed as exc:
        print(f"\nbrowser check FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbrowser check interrupted; everything it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
