"""The forecast plot of a run: the last test sessions, where the three models and the intervals can be told apart."""

from __future__ import annotations

from typing import Any

from pipeline.evaluation.evidence import CHALLENGER, CHAMPION, NAIVE

# About half a year of sessions: at the full history's scale every line is the same line.
SHOWN_SESSIONS = 120


def forecast_figure(ticker: str, day: str, scores: Any, sessions: int = SHOWN_SESSIONS) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    from matplotlib.figure import Figure

    shown = slice(-sessions, None)
    dates = scores.target_date[shown]
    figure = Figure(figsize=(11, 5), dpi=100)
    axes = figure.add_subplot()
    challenger_bounds = scores.bounds.get(CHALLENGER, {})
    for level, alpha in (("95", 0.12), ("80", 0.22)):
        lower, upper = challenger_bounds.get(f"lower_{level}"), challenger_bounds.get(f"upper_{level}")
        if lower is not None and upper is not None:
            axes.fill_between(
                dates,
                lower[shown],
                upper[shown],
                color="tab:blue",
                alpha=alpha,
                linewidth=0,
                label=f"challenger {level}% interval",
            )
    axes.plot(dates, scores.actual[shown], label="actual close", color="black", linewidth=1.4)
    axes.plot(dates, scores.forecasts[CHALLENGER][shown], label="challenger", color="tab:blue", linewidth=1.1)
    axes.plot(
        dates, scores.forecasts[CHAMPION][shown], label="champion", color="tab:green", linewidth=1.0, linestyle="-."
    )
    axes.plot(
        dates,
        scores.forecasts[NAIVE][shown],
        label="naive (previous close)",
        color="tab:orange",
        linewidth=0.9,
        linestyle="--",
    )
    axes.set_title(f"{ticker}, data to {day}: next-session close, last {len(dates)} test sessions")
    axes.set_xlabel("session forecast")
    axes.set_ylabel("close (price units)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncols=2)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
