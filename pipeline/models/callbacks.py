"""Keras callbacks a ticker-day hands to training: stopping at the next epoch on request, and following progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

EpochHook = Callable[[str, int, int], None]


def stop_training_on(stop: threading.Event) -> Any:
    """Ends training after the current epoch once a stop is requested (the check after training then fails the
    ticker), so a stop never waits for the remaining epochs."""
    import keras

    class StopTraining(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if stop.is_set():
                self.model.stop_training = True

    return StopTraining()


def epoch_hook(ticker: str, on_epoch: EpochHook, epochs_planned: int) -> Any:
    """`on_epoch(ticker, epochs_done, epochs_planned)` after each epoch (e.g. a progress bar)."""
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(ticker, epoch + 1, epochs_planned))
