#!/usr/bin/env bash
# Makes sure Debian's Chromium is on this machine, for the browser check that screenshots the MLflow and Prefect UIs
# (scripts/screenshots.py, `make screenshots`). The check drives it with Playwright's Python package, whose wheel
# bundles its own driver, so no chromedriver and no browser download are needed. Idempotent: does nothing when
# /usr/bin/chromium is already there; otherwise installs the `chromium` package with apt-get (through sudo when not
# root), running `apt-get update` only when the package lists cannot provide it.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

installed() { [ -x "$CHROMIUM" ]; }

report() { echo "Chromium: $("$CHROMIUM" --headless --no-sandbox --version 2>/dev/null || echo '?') at $CHROMIUM"; }

if installed; then
    report
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "error: Chromium is not installed and apt-get is not available;" \
         "install Chromium by other means so that $CHROMIUM exists" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "error: Chromium is not installed; installing it needs root or sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
candidate=$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    echo "Chromium: package lists do not offer chromium yet; apt-get update"
    "${sudo[@]}" apt-get update -qq
fi
echo "Chromium: apt-get install chromium"
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation; then
    # Stale lists point at package versions the mirror no longer has: refresh once and retry.
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation
fi

installed || { echo "error: chromium installed but no $CHROMIUM" >&2; exit 1; }
report
