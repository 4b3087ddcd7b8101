"""The README's "Looking at the results" blocks, played as written on the state a newcomer's run leaves behind.

The run happens with nothing set (no STOCKPIPE_HOME, no MLflow or Prefect variables), in a folder that holds only a
`.venv` link, as a fresh clone would after `make run`; the blocks then read `.stockpipe/` relative to that folder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.readme import code_blocks
from tests.servers import PROJECT_ROOT, clean_env, free_port, started, wait_for_http
from tests.support import TINY_TRAINING

pytestmark = pytest.mark.system

VENV = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A working directory after `stockpipe run --tickers MSFT` with nothing set in the environment."""
    folder = tmp_path_factory.mktemp("checkout")
    (folder / ".venv").symlink_to(VENV)
    result = run_in(folder, ".venv/bin/stockpipe run --tickers MSFT")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^\s*MSFT\s+(promoted|kept)\s", result.stdout, flags=re.M), result.stdout[-2000:]
    return folder


def newcomer_env(**extra: str) -> dict[str, str]:
    return clean_env(**TINY_TRAINING, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300", **extra)


def run_in(folder: Path, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=folder, env=newcomer_env(), capture_output=True, text=True, timeout=timeout
    )


def test_state_lands_in_the_working_directory_and_a_rerun_skips(checkout):
    state = checkout / ".stockpipe"
    assert (state / "store" / "MSFT.parquet").is_file()
    assert (state / "mlflow.db").is_file()
    assert (state / "reports" / "MSFT" / "data_docs" / "index.html").is_file(), "GX Data Docs need an absolute folder"
    again = run_in(checkout, ".venv/bin/stockpipe run --tickers MSFT")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert re.search(r"^\s*MSFT\s+skipped\s", again.stdout, flags=re.M), again.stdout[-2000:]


def test_the_python_example_forecasts_from_the_local_store(checkout):
    (block,) = code_blocks("Looking at the results", "python")
    # The block ends with an expression a REPL would show; print it here.
    lines = block.rstrip().splitlines()
    script = "\n".join([*lines[:-1], f"print(({lines[-1].split('#')[0].strip()}).to_json(orient='records'))"])
    result = subprocess.run(
        [".venv/bin/python", "-c", script],
        cwd=checkout,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    predicted = json.loads(run_in(checkout, ".venv/bin/stockpipe predict MSFT --json").stdout)
    assert row["as_of"] == predicted["as_of"] == "2017-11-10"
    assert row["forecast_close"] == pytest.approx(predicted["forecast_close"], rel=1e-6)


def test_the_serving_example_answers_like_predict(checkout):
    block = next(b for b in code_blocks("Looking at the results", "bash") if "mlflow models serve" in b)
    port = free_port()
    script = block.replace("-p 5001", f"-p {port}")
    assert script != block, "the README's serving port moved; update this test"
    log = checkout / "serve.log"
    with started(["bash", "-c", script], log=log, env=newcomer_env(), cwd=checkout) as child:
        wait_for_http(f"http://127.0.0.1:{port}/ping", child, log, timeout=180)
        prices = subprocess.run(
            [
                ".venv/bin/python",
                "-c",
                "import pandas as pd; from pipeline.models.forecasters import to_model_input; "
                "prices = pd.read_parquet('.stockpipe/store/MSFT.parquet').tail(300); "
                "print(to_model_input(prices).to_json(orient='split', index=False))",
            ],
            cwd=checkout,
            env=newcomer_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_split": json.loads(prices)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
            answer = json.loads(response.read())
    served = answer["predictions"][-1]
    predicted = json.loads(run_in(checkout, ".venv/bin/stockpipe predict MSFT --json").stdout)
    assert served["as_of"] == predicted["as_of"]
    assert served["forecast_close"] == pytest.approx(predicted["forecast_close"], rel=1e-6)


def test_the_ui_command_serves_the_local_store(checkout):
    (block,) = [b for b in code_blocks("Looking at the results", "bash") if "stockpipe ui" in b]
    assert ".venv/bin/stockpipe ui" in block and "make ui" in block
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^ui:.*\n\t\$\(BIN\)/stockpipe ui", makefile, flags=re.M), "`make ui` is `stockpipe ui`"
    port = free_port()
    log = checkout / "ui.log"
    with started(
        [".venv/bin/stockpipe", "ui", "--port", str(port)], log=log, env=newcomer_env(), cwd=checkout
    ) as child:
        wait_for_http(f"http://127.0.0.1:{port}/health", child, log, timeout=120)
        search = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 10}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(search, timeout=30) as response:
            names = {e["name"] for e in json.loads(response.read())["experiments"]}
    assert "stockpipe" in names
