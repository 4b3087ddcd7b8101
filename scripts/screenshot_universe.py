"""Prefect's UI over a many-ticker flow run (issue 26): `bench/universe.py`'s synthetic tickers run once against a
real `prefect server start`, then headless Chromium (Debian's) photographs the flow run's page into
docs/screenshots/prefect-universe.png. Training is cut to two epochs: the picture is about how the run reads, the
cost is measured by `make bench` (bench/scale.py).

Run: .venv/bin/python scripts/screenshot_universe.py [--count 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.run import prefect_server, run_cli  # noqa: E402
from bench.scale import UNIVERSE_END  # noqa: E402
from bench.universe import ticker_names, write_universe  # noqa: E402
from scripts.screenshots import CHROMIUM, CHROMIUM_FLAGS, PAGE_TIMEOUT  # noqa: E402

OUT = PROJECT_ROOT / "docs" / "screenshots" / "prefect-universe.png"


def latest_flow_run(api: str) -> dict:
    request = urllib.request.Request(
        f"{api}/flow_runs/filter",
        data=json.dumps({"sort": "START_TIME_DESC", "limit": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        (run,) = json.loads(response.read())
    return run


def photograph(ui: str, run: dict, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, color_scheme="light")
            page.set_default_timeout(PAGE_TIMEOUT)
            page.goto(f"{ui}/runs/flow-run/{run['id']}")
            page.get_by_text(run["name"], exact=True).first.wait_for()
            page.wait_for_timeout(4000)  # the timeline of task runs draws after the page's text
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stockpipe-universe-") as tmp:
        root = Path(tmp)
        folder = root / "universe"
        write_universe(folder, args.count)
        with prefect_server(root) as api:
            command = ["run", "--source", "csv", "--csv-dir", str(folder), "--as-of", UNIVERSE_END]
            outcome = run_cli(
                [*command, "--tickers", *ticker_names(args.count)],
                root / "run" / "state",
                {"STOCKPIPE_TRAINING__EPOCHS": "2"},
                api,
            )
            print(f"{args.count} tickers in {outcome['wall']:.0f} s", flush=True)
            run = latest_flow_run(api)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            photograph(api.removesuffix("/api"), run, OUT)
    print(f"wrote {OUT.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
