"""Nothing lost, nothing half-done: a real `stockpipe run` killed at every point of a ticker-day, and stopped by
SIGTERM or SIGINT, leaves nothing the next run does not settle, and no process or port behind.

The kills are real: `tests.kill_at` runs `stockpipe run` in its own process, which SIGKILLs itself right before or
after one named call (fetch, validation, an epoch of training, logging the model, registration, an alias move).
The kill points run as one chain in one state directory, the way a machine lives through them: each run settles
what the previous kill left (that is the first thing a run does), then is killed at the next point; a last, normal
run settles the last one. Between two runs the test reads the MLflow store to show what the kill left and what the
next run made of it.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient

from pipeline.common.symbols import registered_model_name
from pipeline.data.store import PriceStore
from tests.kill_at import MARKER
from tests.support import MSFT_LAST_SESSION, PROJECT_ROOT, SNAPSHOTS, TINY_TRAINING, clean_env, stockpipe

pytestmark = pytest.mark.system

NAME = registered_model_name("MSFT")
AS_OF = MSFT_LAST_SESSION.isoformat()
# A history of a few years, from a folder of CSV exports: small enough to validate and train in seconds.
HISTORY_SINCE = "2013-11-01"
# The rule reduced to "beats the champion in most blocks and beats naive", so that the tiny challenger is promoted
# over the naive baseline and the kills at registration and at the alias moves are reached (checked below).
EASY_PROMOTION = {"STOCKPIPE_MIN_RELATIVE_GAIN": "0", "STOCKPIPE_PROMOTION_ALPHA": "1"}
# Long enough that a run interrupted mid-training cannot have finished training within the wait below.
LONG_TRAINING = {"STOCKPIPE_TRAINING__EPOCHS": "400", "STOCKPIPE_TRAINING__PATIENCE": "400"}
STOP_WITHIN_SECONDS = 60
KILL_RUN_TIMEOUT = 300


# -- processes -------------------------------------------------------------------------------------------------


def _listening_ports(process: psutil.Process) -> set[int]:
    try:
        return {c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return set()


_TCP_LISTEN = "0A"


def _listened_on(port: int) -> bool:
    """Whether any socket on this machine listens on `port`, from the kernel's tables: connecting to find out can
    succeed with nothing listening (a loopback connection whose ephemeral source port is the port itself)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal delivers them, even when this test runs as a background job
    (a shell without job control starts those with SIGINT ignored, which Python would keep)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Watched:
    """A child process whose whole tree (pid and start time of every descendant) and listening ports are recorded
    while it runs, so that what it leaves behind can be checked after it is gone."""

    name: str
    process: subprocess.Popen
    logs: Path
    started: float = field(default_factory=time.monotonic)
    tree: dict[int, float] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Watched:
        logs = cwd / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, preexec_fn=_default_signals)
        watched = cls(name, process, logs)
        watched.observe()
        return watched

    def observe(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for member in members:
            try:
                self.tree.setdefault(member.pid, member.create_time())
            except psutil.NoSuchProcess:
                continue
            self.ports |= _listening_ports(member)

    @property
    def stdout(self) -> str:
        return (self.logs / f"{self.name}.out").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.logs / f"{self.name}.err").read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        text = "\n".join(
            line for line in (self.stdout + self.stderr).splitlines() if "oneDNN" not in line and "absl::" not in line
        )
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, timeout: float, until: str | None = None) -> bool:
        """Watch until the process ends (True) or `until` appears in its output (False); fail on the timeout."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            self.observe()
            if until is not None and until in self.stdout + self.stderr:
                return False
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: still running after {timeout:.0f}s"
                    f"{f' (waiting for {until!r})' if until else ''}\n{self.tail()}"
                )
            time.sleep(0.1)
        return True

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self.tree.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        return alive

    def assert_nothing_left(self) -> None:
        assert self.process.poll() is not None, f"{self.name} is still running"
        # Children told to stop by their parent's death need a moment, and a process's sockets close with its last
        # thread, which can be after its leader already reads as a zombie.
        deadline = time.monotonic() + 15
        while True:
            alive = self.survivors()
            listening = [port for port in self.ports if _listened_on(port)]
            if not (alive or listening) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not alive, f"{self.name}: left running: {[(p.pid, p.cmdline()) for p in alive]}"
        assert not listening, f"{self.name}: something still listens on {listening} (its Prefect API?)"

    def cleanup(self) -> None:
        """Only what this test started, by pid and start time."""
        for process in self.survivors():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        **{"STOCKPIPE_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "300", **TINY_TRAINING, **extra}
    )


def run_args(exports: Path, *, force: bool) -> list[str]:
    return [
        "run",
        "--tickers",
        "MSFT",
        "--as-of",
        AS_OF,
        "--source",
        "csv",
        "--csv-dir",
        str(exports),
        *(["--force"] if force else []),
    ]


@pytest.fixture
def exports(tmp_path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv")
    prices[prices["Date"] >= HISTORY_SINCE].to_csv(folder / "MSFT.csv", index=False)
    return folder


# -- the MLflow store, as the test reads it ------------------------------------------------------------------------


@dataclass
class Records:
    runs: dict[str, object]  # run id -> mlflow Run, MSFT's runs only
    versions: dict[int, object]  # version -> ModelVersion
    aliases: dict[str, int]

    def running(self) -> list:
        return [r for r in self.runs.values() if r.info.status == "RUNNING"]

    def describe(self) -> str:
        runs = ", ".join(
            f"{r.info.run_name or r.data.tags.get('role')}={r.info.status}"
            f"[{r.data.tags.get('stage', '-')}/{r.data.tags.get('decision', '-')}]"
            for r in sorted(self.runs.values(), key=lambda r: r.info.start_time)
        )
        versions = ", ".join(f"v{v}={m.tags.get('decision')}" for v, m in self.versions.items())
        return f"runs: {runs or 'none'}; versions: {versions or 'none'}; aliases: {self.aliases}"


def read_records(home: Path) -> Records:
    database = home / "mlflow.db"
    if not database.exists():
        return Records({}, {}, {})
    with sqlite3.connect(database) as connection:  # the store survived the kill: a consistent SQLite file
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"{database} is damaged"
    uri = f"sqlite:///{database}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("stockpipe")
    runs = (
        {}
        if experiment is None
        else {
            r.info.run_id: r
            for r in client.search_runs([experiment.experiment_id], "tags.ticker = 'MSFT'", max_results=1000)
        }
    )
    versions = {int(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    aliases = {}
    if versions:
        aliases = {alias: int(v) for alias, v in client.get_registered_model(NAME).aliases.items()}
    return Records(runs, dict(sorted(versions.items())), aliases)


def assert_store_intact(home: Path) -> None:
    store = PriceStore(home / "store", home / "locks")
    if store.path("MSFT").exists():
        history = store.read("MSFT")
        assert history["Date"].max().date() == MSFT_LAST_SESSION and history["Date"].is_unique


def assert_settled(records: Records, *, except_run: str | None = None) -> None:
    """No run RUNNING, and no version with a decision the aliases contradict (except what the run `except_run`,
    cut off just now, left for the next run to settle). At most one promotion completes in these tests, so every
    version that served (the baseline, a promoted one) is still `champion` or `previous`."""
    running = [r.info.run_id for r in records.running() if r.info.run_id != except_run]
    assert not running, f"runs left RUNNING: {running}; {records.describe()}"
    crowned = {records.aliases.get("champion"), records.aliases.get("previous")}
    for number, version in records.versions.items():
        if version.run_id == except_run:
            continue
        decision = version.tags.get("decision")
        if decision in ("promoted", "baseline"):
            assert number in crowned, (
                f"v{number} is tagged {decision} but is neither champion nor previous; {records.describe()}"
            )
        else:
            assert decision == "failed" and version.tags.get("reason", "").startswith("never applied"), (
                f"v{number}: decision {decision!r}, reason {version.tags.get('reason')!r}; {records.describe()}"
            )
    if records.versions:
        champion = records.versions[records.aliases["champion"]]
        assert champion.tags.get("decision") in ("promoted", "baseline", "planted"), records.describe()


# -- kill points ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    name: str
    target: str
    when: str
    stage: str | None  # the `stage` tag of the run cut off; None: no daily run was open yet
    env: dict[str, str] = field(default_factory=dict)
    registers: bool = False  # the kill comes after a new version was registered
    crowned: bool = False  # ... and after it became champion


# In the order a ticker-day reaches them. Each target is what the running code looks up at run time.
KILL_POINTS = [
    KillPoint("fetch", "pipeline.data.sources.CsvSource.receive", "before", None),
    KillPoint("validation", "pipeline.data.ingest.validate_prices", "before", None),
    # Three epochs, cut after the first one was logged to the run: mid-training, the run open.
    KillPoint("training", "mlflow.log_metrics", "after", "training", {"STOCKPIPE_TRAINING__EPOCHS": "3"}),
    KillPoint("logging", "pipeline.registry.tracking.Tracker.log_forecaster", "after", "recording"),
    KillPoint("registration", "pipeline.registry.tracking.Tracker.register", "after", "applying", registers=True),
    # make_champion moves `previous` first: cut between its two moves.
    KillPoint(
        "first alias move", "mlflow.MlflowClient.set_registered_model_alias", "after", "applying", registers=True
    ),
    # Both aliases moved, the run not closed yet.
    KillPoint(
        "alias moved",
        "pipeline.registry.tracking.Tracker.make_champion",
        "after",
        "applying",
        registers=True,
        crowned=True,
    ),
]


def check_left(point: KillPoint, before: Records, after: Records) -> str | None:
    """What the kill left: the id of the run it cut off (RUNNING), if one was open."""
    new_versions = sorted(set(after.versions) - set(before.versions))
    if point.stage is None:
        assert not after.running(), f"{point.name}: no run should be open yet; {after.describe()}"
        assert not [
            r for r in after.runs.values() if r.info.run_id not in before.runs and r.data.tags.get("role") == "daily"
        ], f"{point.name}: {after.describe()}"
        return None
    (cut,) = after.running()
    assert cut.data.tags["stage"] == point.stage, f"{point.name}: {after.describe()}"
    if point.name == "training":
        assert "loss" in cut.data.metrics and "decision" not in cut.data.tags, "cut after the first epoch's log"
    if point.registers:
        assert cut.data.tags.get("decision") == "promoted", (
            f"{point.name}: the tiny challenger must be promoted over the naive champion to reach registration; "
            f"{after.describe()}"
        )
        (version,) = [after.versions[v] for v in new_versions if after.versions[v].run_id == cut.info.run_id]
        assert version.tags["decision"] == "promoted"
        number = int(version.version)
        if point.crowned:
            assert after.aliases == {"champion": number, "previous": 1}, after.describe()
        elif point.name == "first alias move":
            assert after.aliases == {"champion": 1, "previous": 1}, after.describe()
        else:
            assert after.aliases == {"champion": 1}, after.describe()
    else:
        assert not [v for v in new_versions if after.versions[v].run_id == cut.info.run_id], after.describe()
    return cut.info.run_id


def check_settled(point: KillPoint, cut_id: str, left: Records, settled: Records) -> str:
    run = settled.runs[cut_id]
    tags = run.data.tags
    version = next((v for v in settled.versions.values() if v.run_id == cut_id), None)
    if point.crowned:
        assert run.info.status == "FINISHED", f"{point.name}: {settled.describe()}"
        assert tags["stage"] == "done" and tags["decision"] == "promoted"
        assert version is not None and tags["model_version"] == str(version.version)
        assert settled.aliases["champion"] == int(version.version), settled.describe()
        return f"{run.info.status} (v{version.version} champion, decision {tags['decision']})"
    assert run.info.status in ("FAILED", "KILLED"), f"{point.name}: {settled.describe()}"
    assert tags["decision"] == "failed" and tags["stage"] == "done", tags
    assert tags["reason"].startswith(f"cut off while {point.stage}"), tags["reason"]
    if point.registers:
        assert version is not None
        assert version.tags["decision"] == "failed" and version.tags["reason"].startswith("never applied"), version.tags
        assert f"v{version.version} was registered but never became champion" in tags["reason"], tags["reason"]
        assert settled.aliases["champion"] != int(version.version), "a version never applied is not champion"
    return f"{run.info.status}, reason: {tags['reason']}"


def test_a_run_killed_at_any_point_is_settled_by_the_next_run(tmp_path, exports):
    home = tmp_path / "state"
    summary: list[str] = []
    records = read_records(home)
    cut: tuple[KillPoint, str, Records] | None = None  # the point, the run it cut off, what it left
    try:
        for point in KILL_POINTS:
            argv = [
                sys.executable,
                "-m",
                "tests.kill_at",
                point.target,
                point.when,
                "--",
                *run_args(exports, force=True),
            ]
            watched = Watched.start(
                point.name.replace(" ", "-"), argv, base_env(home, **EASY_PROMOTION, **point.env), tmp_path
            )
            try:
                watched.wait(KILL_RUN_TIMEOUT)
            finally:
                watched.cleanup()
            seconds = time.monotonic() - watched.started
            assert watched.process.returncode == -signal.SIGKILL and MARKER in watched.stderr, (
                f"{point.name}: expected a SIGKILL {point.when} {point.target}, got exit code "
                f"{watched.process.returncode}\n{watched.tail()}"
            )
            watched.assert_nothing_left()  # the Prefect API lived in the killed process: its port is closed
            after = read_records(home)
            assert_store_intact(home)
            if cut is not None:  # this run settled the previous kill's run before it was killed itself
                summary.append(f"  settled by the next run: {check_settled(cut[0], cut[1], cut[2], after)}")
            cut_id = check_left(point, records, after)
            assert_settled(after, except_run=cut_id)
            left = f"run RUNNING (stage {point.stage})" if cut_id else "no run open"
            summary.append(
                f"{point.name}: killed {point.when} {point.target} after {seconds:.0f}s "
                f"(ports {sorted(watched.ports)} closed, {len(watched.tree)} process(es) gone); "
                f"left: {left}; {after.describe()}"
            )
            cut = (point, cut_id, after) if cut_id else None
            records = after

        started = time.monotonic()
        normal = stockpipe(*run_args(exports, force=False), cwd=tmp_path, env=base_env(home))
        assert normal.returncode == 0, normal.stdout + normal.stderr
        final = read_records(home)
        assert cut is not None
        summary.append(
            f"  settled by a normal run ({time.monotonic() - started:.0f}s): "
            f"{check_settled(cut[0], cut[1], cut[2], final)}"
        )
        assert_settled(final)
        assert {v: m.tags["decision"] for v, m in final.versions.items()} == {
            1: "baseline",
            2: "failed",
            3: "failed",
            4: "promoted",
        }, final.describe()
        assert final.aliases == {"champion": 4, "previous": 1}, final.describe()
        assert_store_intact(home)
        summary.append(f"final: {final.describe()}")
    finally:
        print("\n" + "\n".join(summary))


# -- orphans -------------------------------------------------------------------------------------------------------


def stop_mid_training(tmp_path: Path, home: Path, exports: Path, signum: signal.Signals) -> tuple[Watched, str | None]:
    """Start `stockpipe run`, send `signum` once training is under way (the ticker in a worker thread, the Prefect
    API in another); returns the process and, if it did not stop within the limit, why (it is then SIGKILLed)."""
    argv = [sys.executable, "-m", "flows.cli", *run_args(exports, force=True)]
    watched = Watched.start(signum.name, argv, base_env(home, **LONG_TRAINING), tmp_path)
    try:
        assert not watched.wait(KILL_RUN_TIMEOUT, until="MSFT: epoch 1/"), f"ended before training\n{watched.tail()}"
        watched.observe()
        assert watched.ports, "the run's Prefect API port was not seen"
        signalled = time.monotonic()
        watched.process.send_signal(signum)
        try:
            watched.wait(STOP_WITHIN_SECONDS)
        except AssertionError:
            return watched, (
                f"{signum.name}: still running {STOP_WITHIN_SECONDS}s after the signal; its log ends:\n"
                f"{watched.tail(12)}"
            )
        watched.assert_nothing_left()
        print(
            f"\n{signum.name}: exit code {watched.process.returncode} {time.monotonic() - signalled:.1f}s after the "
            f"signal; ports {sorted(watched.ports)} closed; left: {read_records(home).describe()}"
        )
        return watched, None
    finally:
        watched.cleanup()


def test_sigterm_and_sigint_stop_everything_the_run_started_and_the_next_run_settles_it(tmp_path, exports):
    """Stopped mid-training, `stockpipe run` exits promptly and leaves no process and no listening port; whatever it
    left open, the next run settles (SIGKILL: the kill points above, each checked the same way)."""
    home = tmp_path / "state"
    problems, interrupted = [], []
    for signum in (signal.SIGTERM, signal.SIGINT):
        before = set(read_records(home).runs)
        watched, problem = stop_mid_training(tmp_path, home, exports, signum)
        if problem:
            problems.append(problem)
            watched.assert_nothing_left()  # after the SIGKILL that ended it
        interrupted += [
            r.info.run_id
            for r in read_records(home).runs.values()
            if r.info.run_id not in before and r.data.tags.get("role") == "daily"
        ]

    normal = stockpipe(*run_args(exports, force=False), cwd=tmp_path, env=base_env(home))
    assert normal.returncode == 0, normal.stdout + normal.stderr
    settled = read_records(home)
    print(f"after a normal run: {settled.describe()}")
    assert_settled(settled)
    assert len(interrupted) == 2, settled.describe()
    for run_id in interrupted:
        run = settled.runs[run_id]
        assert run.info.status in ("FAILED", "KILLED") and run.data.tags["decision"] == "failed", settled.describe()
        assert run.data.tags.get("reason"), run.data.tags
        assert not [v for v in settled.versions.values() if v.run_id == run_id], "a stopped run registers nothing"
    assert not problems, "\n\n".join(problems)
