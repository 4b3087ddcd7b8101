#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are on this machine, for the production-stack
# system test (tests/system/test_production_stack.py). Idempotent: does nothing when Debian's packages
# already installed them under /usr/lib/postgresql/<version>/bin; otherwise installs the `postgresql` package with
# apt-get (through sudo when not root), running `apt-get update` only when the package lists cannot provide it.
set -euo pipefail

installed() { compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; }

report() {
    local bindir
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    echo "PostgreSQL: $("$bindir/postgres" --version) in $bindir"
}

if installed; then
    report
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "error: PostgreSQL is not installed and apt-get is not available;" \
         "install PostgreSQL's server (initdb, pg_ctl, postgres) by other means" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "error: PostgreSQL is not installed; installing it needs root or sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
candidate=$(apt-cache policy postgresql 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    echo "PostgreSQL: package lists do not offer postgresql yet; apt-get update"
    "${sudo[@]}" apt-get update
fi
echo "PostgreSQL: apt-get install postgresql"
if ! "${sudo[@]}" apt-get install -y --no-install-recommends postgresql; then
    # Stale lists point at package versions the mirror no longer has: refresh once and retry.
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends postgresql
fi

installed || { echo "error: postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl" >&2; exit 1; }
report
