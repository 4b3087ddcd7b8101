"""How much of the network's predicted return to keep: fitted on validation sessions, it turns a network with no
skill into the persistence forecast "tomorrow = today"."""

from __future__ import annotations

import numpy as np


def shrinkage_toward_persistence(predicted_returns: np.ndarray, actual_returns: np.ndarray) -> float:
    """The factor in [0, 1] that scales predicted returns to fit actual ones best (least squares through 0).

    Estimated on the validation days, it keeps only as much of the network's signal as held up there: a
    network with no skill shrinks to 0, which is the persistence forecast "tomorrow = today".
    """
    predicted = np.asarray(predicted_returns, dtype="float64")
    actual = np.asarray(actual_returns, dtype="float64")
    energy = float(np.dot(predicted, predicted))
    if energy == 0.0 or not np.isfinite(energy):
        return 0.0
    return float(np.clip(np.dot(predicted, actual) / energy, 0.0, 1.0))
