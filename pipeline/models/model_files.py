"""A forecaster on disk as data, not code: `spec.json` (kind, window, scaling, shrinkage, intervals) and, for the
LSTM, Keras's native `model.keras`, loaded with `safe_mode=True`. Nothing here unpickles anything.

A model's files are fingerprinted with SHA-256 when it is registered (the manifest lives on the model version, in the
tracking database, not beside the files), and checked before every load, so a file replaced in the artifact store
is refused by name instead of executed or trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.models.forecasters import LSTM, NAIVE, SPEC_FORMAT, Forecaster, LstmForecaster, NaiveForecaster

SPEC_FILE = "spec.json"
KERAS_FILE = "model.keras"
# Where the forecaster's own files sit inside an MLflow model directory (its "artifacts").
ARTIFACTS_DIR = "artifacts"
# MLflow writes this small YAML (registered model name and version) into the model's folder in a local artifact
# store whenever someone loads it by a models:/ URI, as the README's example does. No loader here or in MLflow runs
# it as code, so it is left out of the fingerprint rather than making every champion unloadable after one look.
MLFLOW_BOOKKEEPING = frozenset({"registered_model_meta"})


class ModelRefused(RuntimeError):
    """A model's files do not match the digest recorded at registration, or cannot be loaded as data."""


def save(forecaster: Forecaster, folder: Path) -> dict[str, Path]:
    """Write the forecaster's files into `folder`; returns them by role, for packaging."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"spec": folder / SPEC_FILE}
    files["spec"].write_text(json.dumps(forecaster.spec(), indent=2, sort_keys=True))
    if isinstance(forecaster, LstmForecaster):
        files["keras_model"] = folder / KERAS_FILE
        forecaster.keras_model.save(files["keras_model"])
    return files


def load(folder: Path) -> Forecaster:
    """The forecaster stored in `folder` (its spec and weights), loaded as data."""
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"{folder / SPEC_FILE} is missing or not JSON: {type(exc).__name__}") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ModelRefused(f"{folder / SPEC_FILE}: unknown model format (this code reads format {SPEC_FORMAT})")
    kind = spec.get("kind")
    if kind == NAIVE:
        return NaiveForecaster.from_spec(spec)
    if kind == LSTM:
        return LstmForecaster.from_spec(spec, load_keras(folder / KERAS_FILE))
    raise ModelRefused(f"{folder / SPEC_FILE}: unknown model kind {str(kind)[:40]!r}")


def load_keras(path: Path) -> Any:
    import keras

    try:
        # safe_mode refuses Lambda layers and other deserialised code; compile=False: no custom losses to resolve.
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelRefused(f"{path} is not a loadable Keras model: {type(exc).__name__}: {str(exc)[:200]}") from None


# -- fingerprints -----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by relative path (links are refused, not followed)."""
    found: dict[str, str] = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_symlink():
            raise ModelRefused(f"{path} is a symbolic link; model files must be plain files")
        if path.is_file():
            found[path.relative_to(root).as_posix()] = _sha256(path)
    return found


def manifest_text(files: dict[str, str]) -> str:
    """The canonical form stored on a model version."""
    return json.dumps(files, sort_keys=True, separators=(",", ":"))


def verify(root: Path, recorded: str | None, what: str) -> None:
    """Refuse `root` unless its files are exactly those fingerprinted at registration."""
    if not recorded:
        raise ModelRefused(f"{what} has no recorded file digest; it was not registered by this pipeline")
    try:
        expected = json.loads(recorded)
    except ValueError:
        raise ModelRefused(f"{what}: its recorded file digest is unreadable") from None
    actual = {name: digest for name, digest in manifest(root).items() if name not in MLFLOW_BOOKKEEPING}
    changed = sorted(name for name in expected.keys() & actual.keys() if expected[name] != actual[name])
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if changed or missing or extra:
        problems = "; ".join(
            part
            for part in (
                f"changed: {', '.join(changed)}" if changed else "",
                f"missing: {', '.join(missing)}" if missing else "",
                f"unexpected: {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise ModelRefused(
            f"{what}: files differ from the SHA-256 digests recorded at registration ({problems}); refusing to load it"
        )
