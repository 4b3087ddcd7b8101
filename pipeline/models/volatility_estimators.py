"""Textbook one-step-ahead volatility references and range-based variance estimators (issue 22).

Every forecast here is strictly one step ahead: the value at position t uses data up to and including t and
forecasts the log return from t to t + 1. Inputs are numpy arrays; nothing here reads or writes files.

- `garch_t_sigma`: GARCH(1,1) (Bollerslev 1986, J. Econometrics 31(3)) with standardised Student-t errors
  (Bollerslev 1987, Rev. Econ. Stat. 69(3)), fitted by the `arch` package (Sheppard, arch 8.0).
- `parkinson` (Parkinson 1980, J. Business 53(1)), `garman_klass` (Garman & Klass 1980, J. Business 53(1)) and
  `rogers_satchell` (Rogers & Satchell 1991, Ann. Appl. Probab. 1(4)): daily variance from Open/High/Low/Close.
- `fit_har` / `har_sigma`: the heterogeneous autoregressive model of Corsi (2009, J. Financial Econometrics
  7(2)), here on the log of a range-based variance, with daily, weekly (5) and monthly (22) components, and
  optionally the leverage terms of Corsi & Renò's LHAR (2012).

The RiskMetrics EWMA of closes is `pipeline.models.volatility.ewma_volatility`, shared with the LSTM's intervals.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

RISKMETRICS_LAMBDA = 0.94
# Percent returns keep arch's optimiser in its well-scaled range (it warns below about 1).
GARCH_SCALE = 100.0
# Fewer returns than this do not pin down four GARCH-t parameters; such positions get NaN.
MIN_GARCH_RETURNS = 250
# Used only when no fit has succeeded yet: RiskMetrics is the IGARCH limit of GARCH(1,1), and a Gaussian
# (nu = inf) claims no tail thickness the data has not shown.
FALLBACK_GARCH = (0.0, 1 - RISKMETRICS_LAMBDA, RISKMETRICS_LAMBDA, math.inf)
# A session with High == Low (tick-sized prices, e.g. MSFT in 1986-90) has zero range variance; its log would
# be -inf and dominate an OLS in logs. 1e-8 is a 0.01% daily standard deviation, below any real tick.
VARIANCE_FLOOR = 1e-8
HAR_HORIZONS = (1, 5, 22)


def _vector(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _finite_returns(log_returns: np.ndarray) -> np.ndarray:
    returns = _vector(log_returns, "log_returns")
    if not np.all(np.isfinite(returns)):
        raise ValueError("log_returns must be finite")
    return returns


# -- GARCH(1,1)-t ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GarchParams:
    """omega in percent-squared units (returns scaled by GARCH_SCALE); nu is the t's degrees of freedom."""

    omega: float
    alpha: float
    beta: float
    nu: float


def fit_garch_t(scaled: np.ndarray) -> GarchParams | None:
    """GARCH(1,1)-t fit; None when arch fails, does not converge or returns an inadmissible point."""
    # Imported here: `arch` (and the statsmodels it brings) costs every process that only imports scoring ~0.5 s.
    from arch import arch_model
    from arch.utility.exceptions import ConvergenceWarning, DataScaleWarning

    try:
        with warnings.catch_warnings():
            # A non-converged fit is detected from convergence_flag below; the warnings would only be noise.
            for noise in (ConvergenceWarning, DataScaleWarning, RuntimeWarning):
                warnings.simplefilter("ignore", noise)
            # Zero mean: the interval is centred on the naive forecast (zero expected log return), so the
            # variance wanted is E[r^2]; a fitted drift of ~0.03%/day would only cost a parameter.
            model = arch_model(scaled, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
            result = model.fit(disp="off", show_warning=False)
        omega, alpha, beta, nu = (float(result.params[k]) for k in ("omega", "alpha[1]", "beta[1]", "nu"))
    except Exception:  # arch raises assorted numpy/scipy errors on degenerate windows (e.g. all zeros)
        return None
    finite = all(math.isfinite(v) for v in (omega, alpha, beta, nu))
    stationary = omega > 0 and min(alpha, beta) >= 0 and alpha + beta < 1
    admissible = result.convergence_flag == 0 and finite and stationary and nu > 2
    return GarchParams(omega, alpha, beta, nu) if admissible else None


def garch_forecasts(scaled: np.ndarray, params: GarchParams) -> np.ndarray:
    """h[t]: the one-step variance forecast made at t (for return t + 1), over the whole of `scaled`.

    Started as arch starts it (its GARCH backcast: 0.94-weighted mean of the first 75 squares, standing in
    for both the pre-sample square and variance), so right after a fit this matches arch's own filter.
    """
    tau = min(75, scaled.size)
    weights = 0.94 ** np.arange(tau)
    backcast = float(np.sum(scaled[:tau] ** 2 * weights) / weights.sum())
    first = params.omega + (params.alpha + params.beta) * backcast  # h for return 0
    drive = params.omega + params.alpha * scaled**2
    forecasts, _ = signal.lfilter([1.0], [1.0, -params.beta], drive, zi=[params.beta * first])
    return np.asarray(forecasts)


def garch_t_sigma(
    log_returns: np.ndarray, positions: np.ndarray, refit_every: int = 20, window: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """sigma (log-return units) and nu of a GARCH(1,1)-t forecast, made at each position, of return position + 1.

    Refits happen on a fixed grid, at positions that are multiples of `refit_every`, each on the last `window`
    returns up to and including that anchor; a position between anchors runs the variance recursion forward
    from its anchor with that anchor's parameters. A position's output thus depends only on returns up to it
    and on its own index, never on which other positions were asked for (so a daily run and a backtest
    agree). A failed or non-converged fit reuses the previous anchor's parameters (RiskMetrics, Gaussian,
    before any success); positions whose anchor has fewer than MIN_GARCH_RETURNS returns get NaN.
    """
    if refit_every < 1 or window < MIN_GARCH_RETURNS:
        raise ValueError(f"need refit_every >= 1 and window >= {MIN_GARCH_RETURNS}")
    returns = _finite_returns(log_returns)
    where = np.asarray(positions, dtype="int64").reshape(-1)
    if where.size and (where.min() < 0 or where.max() >= returns.size):
        raise IndexError(f"positions must lie in [0, {returns.size})")
    sigma = np.full(where.size, np.nan)
    nu = np.full(where.size, np.nan)
    anchors = where - where % refit_every
    previous = GarchParams(*FALLBACK_GARCH)
    for anchor in np.unique(anchors):
        start = max(0, int(anchor) - window + 1)
        if anchor + 1 - start < MIN_GARCH_RETURNS:
            continue
        params = fit_garch_t(GARCH_SCALE * returns[start : anchor + 1]) or previous
        previous = params
        members = np.flatnonzero(anchors == anchor)
        last = int(where[members].max())
        forecasts = garch_forecasts(GARCH_SCALE * returns[start : last + 1], params)
        sigma[members] = np.sqrt(forecasts[where[members] - start]) / GARCH_SCALE
        nu[members] = params.nu
    return sigma, nu


def standardized_t_quantile(prob: float | np.ndarray, nu: float | np.ndarray) -> np.ndarray:
    """Quantile of the unit-variance Student-t that arch's `dist="t"` uses; the normal's where nu is inf."""
    nu = np.asarray(nu, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(np.isinf(nu), 1.0, np.sqrt((nu - 2) / nu))
    return np.where(np.isinf(nu), stats.norm.ppf(prob), stats.t.ppf(prob, nu) * scale)


# -- Range-based variance ------------------------------------------------------------------------------


def _log_ohlc(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log prices; NaN for a session with a non-positive or non-finite price.

    High and Low are widened to contain Open and Close: vendors' adjusted bars sometimes put a close a cent
    outside the range, which would make Garman-Klass or Rogers-Satchell negative.
    """
    prices = [_vector(p, name) for p, name in ((open_, "open"), (high, "high"), (low, "low"), (close, "close"))]
    if len({p.size for p in prices}) != 1:
        raise ValueError("open, high, low and close must have the same length")
    stacked = np.vstack(prices)
    valid = np.all(np.isfinite(stacked) & (stacked > 0), axis=0)
    o, h, lo, c = np.where(valid, np.log(np.where(valid, stacked, 1.0)), np.nan)
    return o, np.fmax.reduce([h, o, c]), np.fmin.reduce([lo, o, c]), c


def parkinson(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Per-session variance (ln(H/L))^2 / (4 ln 2); Open and Close only widen the range."""
    _o, h, lo, _c = _log_ohlc(open_, high, low, close)
    return (h - lo) ** 2 / (4 * math.log(2))


def garman_klass(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Per-session variance 0.5 (ln H/L)^2 - (2 ln 2 - 1)(ln C/O)^2 (Garman & Klass's practical estimator)."""
    o, h, lo, c = _log_ohlc(open_, high, low, close)
    return 0.5 * (h - lo) ** 2 - (2 * math.log(2) - 1) * (c - o) ** 2


def rogers_satchell(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Per-session variance ln(H/C) ln(H/O) + ln(L/C) ln(L/O); unbiased under a drift, unlike Parkinson's."""
    o, h, lo, c = _log_ohlc(open_, high, low, close)
    return (h - c) * (h - o) + (lo - c) * (lo - o)


# -- HAR of log range variance ------------------------------------------------------------------------


@dataclass(frozen=True)
class HarCoefficients:
    """log v_{t+1} = intercept + daily log v_t + weekly log mean5_t + monthly log mean22_t
    [+ leverage . (mean of min(r, 0) over the last 1, 5 and 22 sessions)] + e, Var(e) = s^2."""

    intercept: float
    daily: float
    weekly: float
    monthly: float
    residual_variance: float
    n_obs: int
    # The LHAR terms of Corsi & Renò (2012, J. Business & Economic Statistics 30(3)); None for a plain HAR.
    leverage: tuple[float, float, float] | None = None

    @property
    def vector(self) -> np.ndarray:
        return np.array([self.intercept, self.daily, self.weekly, self.monthly, *(self.leverage or ())])


def _trailing_means(values: np.ndarray, horizon: int) -> np.ndarray:
    means = np.full(values.size, np.nan)
    if values.size >= horizon:
        means[horizon - 1 :] = np.lib.stride_tricks.sliding_window_view(values, horizon).mean(axis=1)
    return means


def har_design(variance: np.ndarray, log_returns: np.ndarray | None = None) -> np.ndarray:
    """Rows [1, log v_t, log mean(v_{t-4..t}), log mean(v_{t-21..t})] per session; NaN before session 21.

    Corsi averages the variances and then takes logs, so a flat day's floor only touches the daily term.
    With `log_returns` (r_t = log(C_t / C_{t-1}), one per session, NaN for the first), three leverage columns
    follow: the trailing means of min(r, 0) over 1, 5 and 22 sessions. Falls raise tomorrow's variance more
    than rises (the leverage effect), which a symmetric model can only learn late.
    """
    v = np.fmax(_vector(variance, "variance"), VARIANCE_FLOOR)  # fmax keeps NaN sessions NaN
    columns = [np.ones(v.size)] + [np.log(_trailing_means(v, horizon)) for horizon in HAR_HORIZONS]
    if log_returns is not None:
        returns = _vector(log_returns, "log_returns")
        if returns.size != v.size:
            raise ValueError(f"{returns.size} returns for {v.size} sessions of variance")
        columns += [_trailing_means(np.minimum(returns, 0.0), horizon) for horizon in HAR_HORIZONS]
    return np.column_stack(columns)


def fit_har(
    variance: np.ndarray, train_end: int, train_start: int = 0, log_returns: np.ndarray | None = None
) -> HarCoefficients:
    """OLS of log v_{t+1} on `har_design` row t, using sessions train_start..train_end - 1 only.

    A row enters when its whole 22-session history and its target lie in that span (rows with NaN are
    dropped), so nothing at or after train_end touches the coefficients.
    """
    design = har_design(variance, log_returns)
    if not 0 <= train_start < train_end <= design.shape[0]:
        raise ValueError(f"need 0 <= train_start < train_end <= {design.shape[0]}")
    target = np.log(np.fmax(_vector(variance, "variance"), VARIANCE_FLOOR))
    rows = np.arange(train_start + max(HAR_HORIZONS) - 1, train_end - 1)
    x, y = design[rows], target[rows + 1]
    keep = np.all(np.isfinite(x), axis=1) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if y.size <= x.shape[1]:
        raise ValueError(f"only {y.size} usable HAR rows before session {train_end}; need more than {x.shape[1]}")
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residuals = y - x @ beta
    s2 = float(residuals @ residuals / (y.size - x.shape[1]))
    intercept, daily, weekly, monthly, *leverage = (float(b) for b in beta)
    lev = (leverage[0], leverage[1], leverage[2]) if leverage else None
    return HarCoefficients(intercept, daily, weekly, monthly, s2, int(y.size), lev)


def har_sigma(variance: np.ndarray, coefficients: HarCoefficients, log_returns: np.ndarray | None = None) -> np.ndarray:
    """sigma[t]: the HAR forecast, made at t, of the range-based volatility of session t + 1.

    The model is linear in log v, so exp(fitted log) estimates the conditional median of v, not its mean;
    if the residual is Gaussian with variance s^2, E[v] = exp(mean + s^2 / 2), hence the correction.
    The result is in the range estimator's units (e.g. open-to-close for Parkinson), not close-to-close:
    a conformal scale absorbs the difference.
    """
    if (coefficients.leverage is None) != (log_returns is None):
        raise ValueError("an LHAR needs the log returns it was fitted on, and a plain HAR none")
    log_forecast = har_design(variance, log_returns) @ coefficients.vector + coefficients.residual_variance / 2
    return np.sqrt(np.exp(log_forecast))
