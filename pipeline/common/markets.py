"""Which exchange's calendar a ticker trades on: from its Yahoo suffix, unless the user's map says otherwise.

The calendar decides freshness, the missing-session rule, closed-day no-ops, replay's sessions and the date a
forecast is for; a wrong one shifts all of them silently, so an unknown suffix is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.common.trading_calendar import DEFAULT_EXCHANGE

# Yahoo's symbol suffixes and the exchange-calendars code of the exchange each one lists.
YAHOO_SUFFIX_EXCHANGES: dict[str, str] = {
    "AS": "XAMS",  # Euronext Amsterdam
    "AT": "ASEX",  # Athens
    "AX": "XASX",  # Australian Securities Exchange
    "BA": "XBUE",  # Buenos Aires
    "BD": "XBUD",  # Budapest
    "BK": "XBKK",  # Thailand
    "BO": "XBOM",  # Bombay
    # The National Stock Exchange of India keeps Bombay's holidays; exchange-calendars has no XNSE.
    "NS": "XBOM",
    "BR": "XBRU",  # Euronext Brussels
    "CO": "XCSE",  # Copenhagen
    "DE": "XETR",  # Xetra
    "DU": "XDUS",  # Düsseldorf
    "F": "XFRA",  # Frankfurt
    "HM": "XHAM",  # Hamburg
    "SG": "XSTU",  # Stuttgart
    "HE": "XHEL",  # Helsinki
    "HK": "XHKG",  # Hong Kong
    "IC": "XICE",  # Iceland
    "IL": "XLON",  # London's international order book
    "L": "XLON",  # London
    "IR": "XDUB",  # Dublin
    "IS": "XIST",  # Istanbul
    "JK": "XIDX",  # Indonesia
    "JO": "XJSE",  # Johannesburg
    "KL": "XKLS",  # Kuala Lumpur
    "KS": "XKRX",  # Korea (KOSPI)
    "KQ": "XKRX",  # Korea (KOSDAQ), the same exchange's sessions
    "LS": "XLIS",  # Euronext Lisbon
    "MC": "XMAD",  # Madrid
    "MI": "XMIL",  # Borsa Italiana
    "MX": "XMEX",  # Mexico
    "NZ": "XNZE",  # New Zealand
    "OL": "XOSL",  # Oslo
    "PA": "XPAR",  # Euronext Paris
    "PR": "XPRA",  # Prague
    "RG": "XRIS",  # Riga
    "SA": "BVMF",  # B3, São Paulo
    "SI": "XSES",  # Singapore
    "SN": "XSGO",  # Santiago
    "SR": "XSAU",  # Saudi Exchange
    "SS": "XSHG",  # Shanghai
    # Shenzhen closes on mainland China's holidays, as Shanghai does; exchange-calendars has no XSHE.
    "SZ": "XSHG",
    "ST": "XSTO",  # Stockholm
    "SW": "XSWX",  # SIX Swiss
    "TA": "XTAE",  # Tel Aviv
    "TL": "XTAL",  # Tallinn
    "TO": "XTSE",  # Toronto
    "V": "XTSE",  # TSX Venture, on Toronto's sessions
    "T": "XTKS",  # Tokyo
    "TW": "XTAI",  # Taiwan
    "TWO": "XTAI",  # Taipei Exchange, on Taiwan's sessions
    "VI": "XWBO",  # Vienna
    "VS": "XLIT",  # Vilnius
    "WA": "XWAR",  # Warsaw
}


class UnknownMarket(ValueError):
    """A ticker whose exchange cannot be told from its symbol, and the map does not name."""


def exchange_for(ticker: str, overrides: Mapping[str, str] | None = None, yahoo_symbol: str | None = None) -> str:
    """The exchange-calendars code for `ticker`: the user's map first, then the Yahoo symbol's suffix (`7203.T` is
    Tokyo), New York for a symbol without one (MSFT, BRK-B, an index such as ^GSPC)."""
    overrides = overrides or {}
    if ticker in overrides:
        return known_exchange(overrides[ticker])
    symbol = yahoo_symbol or ticker
    if "." not in symbol:
        return DEFAULT_EXCHANGE
    suffix = symbol.rsplit(".", 1)[1].upper()
    if suffix in YAHOO_SUFFIX_EXCHANGES:
        return YAHOO_SUFFIX_EXCHANGES[suffix]
    raise UnknownMarket(
        f"{ticker}: no exchange known for the symbol suffix .{suffix}; name its calendar in STOCKPIPE_EXCHANGES, "
        f'e.g. STOCKPIPE_EXCHANGES=\'{{"{ticker}": "XNYS"}}\' (codes: `python -c "import exchange_calendars as x; '
        f'print(x.get_calendar_names())"`)'
    )


def known_exchange(code: str) -> str:
    """`code` if exchange-calendars has a calendar of that name (or alias, such as NYSE), else a ValueError."""
    import exchange_calendars

    names = set(exchange_calendars.get_calendar_names(include_aliases=True))
    if code not in names:
        raise ValueError(f"unknown exchange calendar {code[:20]!r}: use an exchange-calendars code such as XNYS, XLON")
    return code
