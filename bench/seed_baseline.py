"""The seeds' forecaster, reproduced only to be measured against: min-max scaled closes with the scaler fit on
the whole series (the leak is the point), 60-day windows, 2 x LSTM(50) with dropout, 10 epochs, next scaled close."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

WINDOW = 60
UNITS = 50
EPOCHS = 10
BATCH = 32
SEED = 42


def seed_forecasts(history: pd.DataFrame, train_end: pd.Timestamp, as_of_dates: pd.DatetimeIndex) -> np.ndarray:
    """Next-close forecasts for each as-of date, trained on windows whose target precedes `train_end`."""
    import keras
    from sklearn.preprocessing import MinMaxScaler

    keras.utils.set_random_seed(SEED)
    closes = history["Close"].to_numpy(dtype="float64").reshape(-1, 1)
    scaler = MinMaxScaler().fit(closes)  # on the whole series, test days included, as the seeds did
    scaled = scaler.transform(closes).reshape(-1)
    windows = sliding_window_view(scaled, WINDOW)[:-1]  # window i ends at close i + WINDOW - 1
    targets = scaled[WINDOW:]
    target_dates = pd.DatetimeIndex(history["Date"]).to_numpy()[WINDOW:]
    train = target_dates < np.datetime64(train_end)

    model = keras.Sequential(
        [
            keras.Input(shape=(WINDOW, 1)),
            keras.layers.LSTM(UNITS, return_sequences=True),
            keras.layers.Dropout(0.2),
            keras.layers.LSTM(UNITS),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(windows[train][..., None], targets[train], epochs=EPOCHS, batch_size=BATCH, verbose=0)

    position = {d: i for i, d in enumerate(pd.DatetimeIndex(history["Date"]))}
    ends = np.array([position[d] for d in as_of_dates])  # the window for as-of day d ends at close d
    inputs = windows[ends - WINDOW + 1][..., None]
    predicted = np.asarray(model(inputs, training=False)).reshape(-1, 1)
    return scaler.inverse_transform(predicted).reshape(-1)
