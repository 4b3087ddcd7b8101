"""pipeline/common/redact.py: passwords in URLs and key=value secrets masked in anything that leaves the process,
URIs shown without their password, untrusted text cut to a short single-line excerpt, and the environment's secrets
listed."""

from __future__ import annotations

import pytest

from pipeline.common.redact import MASK, excerpt, mask_secrets, masked_uri, secret_values

# -- mask_secrets: passwords in URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgresql+psycopg://user:pw@host/db", "postgresql+psycopg://user:***@host/db"),
        ("postgresql+asyncpg://prefect:s3cr3t@db:5432/prefect", "postgresql+asyncpg://prefect:***@db:5432/prefect"),
        ("http://u:p@h:5000", "http://u:***@h:5000"),
        ("https://admin:0123456789abcdef@mlflow.example/api", "https://admin:***@mlflow.example/api"),
        ("mysql://root:p%40ss@127.0.0.1/x", "mysql://root:***@127.0.0.1/x"),
        (
            "connecting to http://admin:hunter22@127.0.0.1:5000 failed: Connection refused",
            "connecting to http://admin:***@127.0.0.1:5000 failed: Connection refused",
        ),
        (
            "a=postgresql://a:one@h1/x b=postgresql://b:two@h2/y",
            "a=postgresql://a:***@h1/x b=postgresql://b:***@h2/y",
        ),
    ],
)
def test_url_passwords_are_masked_keeping_the_rest(text, expected):
    assert mask_secrets(text) == expected


# -- mask_secrets: key=value secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("password=hunter22", "hunter22"),
        ("Password = hunter22", "hunter22"),
        ("token: abc123def", "abc123def"),
        ("dbname=x user=y password=hunter22 host=z", "hunter22"),
        ("secret=s3cr3t-value", "s3cr3t-value"),
        ("api_key=AKIA0123456789", "AKIA0123456789"),
        ("api-key: AKIA0123456789", "AKIA0123456789"),
        ("auth_string=admin:hunter22", "admin:hunter22"),
        ("pwd=hunter22;x=1", "hunter22"),
        ("?user=a&password=hunter22&sslmode=require", "hunter22"),
    ],
)
def test_keyed_secrets_are_masked(text, secret):
    masked = mask_secrets(text)
    assert secret not in masked and MASK in masked, masked


@pytest.mark.parametrize(
    "text, secret",
    [
        # Environment entries and settings as they are printed: the secret word ends a longer NAME.
        ("PREFECT_API_AUTH_STRING=admin:hunter22", "hunter22"),
        ("PREFECT_SERVER_API_AUTH_STRING=admin:hunter22", "hunter22"),
        ("MLFLOW_TRACKING_PASSWORD=hunter22", "hunter22"),
        ("MLFLOW_TRACKING_TOKEN=eyJhbGciOi", "eyJhbGciOi"),
        ("POSTGRES_PASSWORD: hunter22", "hunter22"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY=0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_secrets_in_environment_style_names_are_masked(text, secret):
    masked = mask_secrets(text)
    assert secret not in masked, masked
    assert masked.split("=")[0].split(":")[0] == text.split("=")[0].split(":")[0], "the name stays readable"


@pytest.mark.parametrize(
    "text",
    [
        "MSFT  promoted  challenger RMSE 0.8123 < champion 0.9011 (p=0.012)",
        "the close was 83.87 at 16:00:00 on 2017-11-10",
        "http://127.0.0.1:5000/#/experiments/1/runs/0123abcd",
        "https://user@host.example/path",
        "mailto:joe@example.com",
        "Close=83.87, Volume=19,852,100",
        "tokens: 12 passwords checked",
        "tokenizer=word-piece",
        "sqlite:////tmp/state/mlflow.db",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert mask_secrets(text) == text


# -- masked_uri -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, expected",
    [
        (
            "postgresql+psycopg://mlflow:hunter22@db.example:5432/mlflow?sslmode=require",
            "postgresql+psycopg://mlflow:***@db.example:5432/mlflow?sslmode=require",
        ),
        ("http://admin:hunter22@127.0.0.1:5000", "http://admin:***@127.0.0.1:5000"),
        ("https://admin:hunter22@mlflow.example/prefix/", "https://admin:***@mlflow.example/prefix/"),
        ("http://:hunter22@127.0.0.1:5000/x", "http://:***@127.0.0.1:5000/x"),
    ],
)
def test_masked_uri_keeps_scheme_user_host_port_path_and_query(uri, expected):
    assert masked_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "sqlite:////tmp/state/mlflow.db", "file:///tmp/mlruns", "https://user@host/x", "x"],
)
def test_a_uri_without_a_password_is_shown_as_it_is(uri):
    assert masked_uri(uri) == uri


def test_a_password_in_a_uri_query_is_masked():
    assert masked_uri("postgresql://mlflow@db/mlflow?password=hunter22") == "postgresql://mlflow@db/mlflow?password=***"


def test_masked_uri_keeps_an_ipv6_host_a_valid_uri():
    assert masked_uri("http://admin:hunter22@[::1]:5000/api") == "http://admin:***@[::1]:5000/api"


# -- excerpt --------------------------------------------------------------------------------------------------------


def test_excerpt_puts_control_characters_and_line_breaks_on_one_line():
    text = "MSFT\x00row\r\n7\x1b[31mred\x1b[0m\x07\x7fend"
    shown = excerpt(text)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert all(ch.isprintable() for ch in shown), repr(shown)
    assert "MSFT" in shown and "row" in shown and "end" in shown


def test_excerpt_drops_c1_controls_that_terminals_obey():
    """\x9b is the 8-bit Control Sequence Introducer (ESC [), \x85 a line break (NEL): untrusted text must not move
    the cursor or split a log line with them."""
    shown = excerpt("a\x9b2Jb\x85c\u2028d")
    assert all(ch.isprintable() for ch in shown), repr(shown)


@pytest.mark.parametrize("limit", [10, 40, 300])
def test_excerpt_caps_the_length(limit):
    shown = excerpt("x" * 10_000, limit)
    assert len(shown) == limit and shown.endswith("…")
    assert excerpt("short", limit) == "short"


def test_excerpt_masks_secrets_before_cutting_so_no_part_of_one_shows():
    secret = "0123456789abcdef0123456789abcdef"
    for cut in range(5, 60):
        shown = excerpt(f"connect to postgresql://u:{secret}@db/x failed", cut)
        assert secret[:4] not in shown, (cut, shown)
        shown = excerpt(f"failed with password={secret} on db", cut)
        assert secret[:4] not in shown, (cut, shown)


def test_excerpt_of_an_exception_masks_its_message():
    error = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5000): http://admin:hunter22@127.0.0.1:5000")
    shown = excerpt(error)
    assert "hunter22" not in shown and "127.0.0.1" in shown


def test_the_default_excerpt_is_short():
    assert len(excerpt("y" * 5000)) <= 300


# -- secret_values --------------------------------------------------------------------------------------------------


def test_secret_values_finds_the_environments_secrets_longest_first():
    environ = {
        "MLFLOW_TRACKING_PASSWORD": "0123456789abcdef",
        "PREFECT_API_AUTH_STRING": "admin:fedcba9876543210ff",
        "POSTGRES_PASSWORD": "pg-password-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-key-value",
        "GITHUB_TOKEN": "ghp_abcdefghijkl",
        "OPENAI_API_KEY": "sk-abcdefghij",
        "MLFLOW_TRACKING_URI": "http://admin:inline-password@127.0.0.1:5000",
        "DATABASE_URL": "postgresql+asyncpg://prefect:db-url-password@db/prefect",
        "PATH": "/usr/local/bin:/usr/bin",
        "HOME": "/root",
        "PWD": "/work/main",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "STOCKPIPE_HOME": "/tmp/state",
    }
    found = secret_values(environ)
    assert set(found) == {
        "0123456789abcdef",
        "admin:fedcba9876543210ff",
        "pg-password-1",
        "flask-secret-key-value",
        "ghp_abcdefghijkl",
        "sk-abcdefghij",
        "inline-password",
        "db-url-password",
    }
    assert [len(v) for v in found] == sorted((len(v) for v in found), reverse=True)


def test_secret_values_skips_empty_and_short_values_and_counts_each_once():
    environ = {
        "A_PASSWORD": "",
        "B_TOKEN": "abc",
        "C_PASSWORD": "same-secret",
        "D_SECRET": "same-secret",
        "E_URL": "http://u:same-secret@h/",
    }
    assert secret_values(environ) == ["same-secret"]


def test_secret_values_of_an_environment_without_secrets_is_empty():
    assert secret_values({"PATH": "/usr/bin", "LANG": "C.UTF-8", "PREFECT_API_URL": "http://127.0.0.1:4200/api"}) == []
