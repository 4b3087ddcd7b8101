"""A picture of the test days: actual closes, the model's forecasts and the naive forecast."""

from __future__ import annotations

import numpy as np


def forecast_figure(ticker: str, test, forecast: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), dpi=110)
    axes = figure.add_subplot()
    axes.plot(test.target_date, test.next_close, label="actual close", color="black", linewidth=1.2)
    axes.plot(test.target_date, forecast, label="LSTM forecast", color="tab:blue", linewidth=1)
    axes.plot(test.target_date, test.last_close, label="naive (previous close)", color="tab:orange",
              linewidth=0.8, linestyle="--")
    axes.set_title(f"{ticker}: next-session close on the test days")
    axes.set_ylabel("price")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
