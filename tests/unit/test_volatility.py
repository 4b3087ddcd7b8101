"""The textbook volatility references of pipeline.models.volatility_estimators, on hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from pipeline.models.volatility_estimators import (
    fit_har,
    garch_t_sigma,
    garman_klass,
    har_sigma,
    parkinson,
    rogers_satchell,
    standardized_t_quantile,
)

SNAPSHOTS = Path(__file__).resolve().parents[2] / "data" / "snapshots"


@pytest.fixture(scope="module")
def gspc_returns() -> np.ndarray:
    closes = pd.read_csv(SNAPSHOTS / "GSPC.csv")["Close"].to_numpy(dtype="float64")
    return np.diff(np.log(closes))


# -- Range-based variance --------------------------------------------------------------------------


def test_parkinson_on_three_hand_made_sessions():
    # An ordinary bar; a bar without range; a bar whose close sits above its recorded high.
    open_ = np.array([100.0, 50.0, 10.0])
    high = np.array([102.0, 50.0, 10.5])
    low = np.array([99.0, 50.0, 9.8])
    close = np.array([101.0, 50.0, 10.6])
    four_ln2 = 4 * math.log(2)
    expected = [
        math.log(102 / 99) ** 2 / four_ln2,  # (ln H/L)^2 / (4 ln 2) = 0.000321...
        0.0,
        math.log(10.6 / 9.8) ** 2 / four_ln2,  # the range widened to reach the close
    ]
    np.testing.assert_allclose(parkinson(open_, high, low, close), expected, rtol=1e-12)
    assert expected[0] == pytest.approx(3.2143e-4, rel=1e-4)


def test_range_estimators_give_nan_for_non_positive_prices_and_match_their_formulas():
    o, h, lo, c = np.array([100.0, 1.0]), np.array([103.0, 1.0]), np.array([98.0, 0.0]), np.array([99.0, 1.0])
    assert np.isnan(parkinson(o, h, lo, c)[1]) and np.isnan(garman_klass(o, h, lo, c)[1])
    u, d, k = math.log(103 / 100), math.log(98 / 100), math.log(99 / 100)  # high, low, close relative to open
    assert garman_klass(o, h, lo, c)[0] == pytest.approx(0.5 * (u - d) ** 2 - (2 * math.log(2) - 1) * k**2)
    assert rogers_satchell(o, h, lo, c)[0] == pytest.approx(u * (u - k) + d * (d - k))


def test_har_fit_matches_an_independent_least_squares_and_ignores_later_sessions():
    rng = np.random.default_rng(7)
    variance = np.exp(rng.normal(-9, 0.6, 70))
    train_end = 50
    rows, targets = [], []
    for t in range(21, train_end - 1):  # a row needs 22 sessions of history and its target before train_end
        rows.append(
            [
                1.0,
                math.log(variance[t]),
                math.log(variance[t - 4 : t + 1].mean()),
                math.log(variance[t - 21 : t + 1].mean()),
            ]
        )
        targets.append(math.log(variance[t + 1]))
    x, y = np.array(rows), np.array(targets)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = np.sum((y - x @ beta) ** 2) / (len(y) - 4)

    fit = fit_har(variance, train_end)
    got = [fit.intercept, fit.daily, fit.weekly, fit.monthly]
    np.testing.assert_allclose(got, beta, rtol=1e-9, atol=1e-12)
    assert fit.residual_variance == pytest.approx(s2, rel=1e-9) and fit.n_obs == len(y) == 28

    later = variance.copy()
    later[train_end:] *= 5.0
    assert fit_har(later, train_end) == fit

    sigma = har_sigma(variance, fit)
    t = 60
    assert sigma[t] == pytest.approx(math.sqrt(math.exp(x_row(variance, t) @ beta + s2 / 2)), rel=1e-9)
    assert np.isnan(sigma[:21]).all()


def x_row(variance: np.ndarray, t: int) -> np.ndarray:
    return np.array(
        [
            1.0,
            math.log(variance[t]),
            math.log(variance[t - 4 : t + 1].mean()),
            math.log(variance[t - 21 : t + 1].mean()),
        ]
    )


def test_the_leverage_har_is_the_ols_of_the_har_rows_plus_trailing_mean_negative_returns():
    rng = np.random.default_rng(11)
    n, train_end = 90, 80
    variance = np.exp(rng.normal(-9, 0.6, n))
    returns = np.concatenate([[np.nan], rng.normal(0, 0.01, n - 1)])
    falls = np.minimum(returns, 0.0)
    rows, targets = [], []
    for t in range(22, train_end - 1):  # row 21's monthly fall mean would reach the first session, without a return
        leverage = [falls[t], falls[t - 4 : t + 1].mean(), falls[t - 21 : t + 1].mean()]
        rows.append([*x_row(variance, t), *leverage])
        targets.append(math.log(variance[t + 1]))
    x, y = np.array(rows), np.array(targets)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = np.sum((y - x @ beta) ** 2) / (len(y) - 7)

    fit = fit_har(variance, train_end, log_returns=returns)
    np.testing.assert_allclose(fit.vector, beta, rtol=1e-9, atol=1e-12)
    assert fit.leverage is not None and fit.residual_variance == pytest.approx(s2, rel=1e-9)
    t = 85
    row = [*x_row(variance, t), falls[t], falls[t - 4 : t + 1].mean(), falls[t - 21 : t + 1].mean()]
    sigma = har_sigma(variance, fit, returns)
    assert sigma[t] == pytest.approx(math.sqrt(math.exp(np.array(row) @ beta + s2 / 2)), rel=1e-9)
    with pytest.raises(ValueError, match="LHAR"):
        har_sigma(variance, fit)


def test_har_fit_needs_enough_rows():
    with pytest.raises(ValueError, match="usable HAR rows"):
        fit_har(np.full(30, 1e-4), 25)


# -- GARCH(1,1)-t --------------------------------------------------------------------------------------


def test_garch_t_on_a_bundled_series_is_finite_and_never_looks_ahead(gspc_returns):
    r = gspc_returns[:1400]
    positions = np.arange(1190, 1230)  # crosses the refit anchors 1200 and 1220
    sigma, nu = garch_t_sigma(r, positions)
    assert sigma.shape == nu.shape == (40,)
    assert np.isfinite(sigma).all() and (sigma > 0).all() and (nu > 2).all()
    assert 0.002 < np.median(sigma) < 0.05  # a daily volatility of the S&P 500, in log-return units

    k = 1205
    changed = r.copy()
    changed[k + 1 :] = np.random.default_rng(0).normal(0, 0.05, changed.size - k - 1)
    sigma2, nu2 = garch_t_sigma(changed, positions)
    upto = positions <= k
    assert np.array_equal(sigma2[upto], sigma[upto]) and np.array_equal(nu2[upto], nu[upto])
    assert not np.array_equal(sigma2[~upto], sigma[~upto])


def test_garch_t_agrees_with_arch_at_a_refit_and_with_itself_when_asked_alone(gspc_returns):
    r = gspc_returns[:1400]
    anchor = 1200
    sigma, nu = garch_t_sigma(r, np.array([anchor, anchor + 7]))
    fitted = arch_model(100 * r[anchor - 999 : anchor + 1], mean="Zero", vol="GARCH", p=1, q=1, dist="t").fit(
        disp="off"
    )
    arch_sigma = math.sqrt(fitted.forecast(horizon=1).variance.to_numpy()[-1, 0]) / 100
    assert sigma[0] == pytest.approx(arch_sigma, rel=1e-6)
    assert nu[0] == pytest.approx(float(fitted.params["nu"]), rel=1e-6)
    alone, _ = garch_t_sigma(r, np.array([anchor + 7]))
    assert alone[0] == sigma[1]


def test_garch_t_never_raises_on_a_degenerate_window():
    flat = np.zeros(400)
    sigma, nu = garch_t_sigma(flat, np.array([10, 300, 399]))
    assert np.isnan(sigma[0])  # too few returns to fit
    assert np.isfinite(sigma[1:]).all() and np.isinf(nu[1:]).all()  # RiskMetrics fallback, Gaussian


def test_standardized_t_quantile_has_unit_variance_and_a_gaussian_limit():
    assert standardized_t_quantile(0.975, np.inf) == pytest.approx(1.959964, rel=1e-6)
    nu = 5.0
    assert standardized_t_quantile(0.975, nu) == pytest.approx(2.570582 * math.sqrt(3 / 5), rel=1e-6)
