#!/bin/sh
# Entrypoint of the mlflow service: writes the basic-auth app's configuration to $MLFLOW_AUTH_CONFIG_PATH, then
# runs the command it is given (`mlflow server --app-name=basic-auth ...`).
#
# MLflow reads the auth database and the default permission only from that ini file, so it is written here, at
# every start, from the environment: a changed docker/.env applies on the next `up`, and the file stays in the
# container, never in a volume. The admin's name and password are not in it: MLflow reads MLFLOW_AUTH_ADMIN_USERNAME and
# MLFLOW_AUTH_ADMIN_PASSWORD itself and creates that admin on the first start, so no default admin ever exists
# (MLflow also refuses its old default, admin/password1234). The file does hold the database password, so it is
# readable by this user only, and nothing here prints it.
#
#   MLFLOW_AUTH_CONFIG_PATH=... MLFLOW_AUTH_DATABASE_URI=postgresql://... ./mlflow-basic-auth.sh mlflow server ...
set -eu

: "${MLFLOW_AUTH_CONFIG_PATH:?MLFLOW_AUTH_CONFIG_PATH: where to write the basic-auth ini}"
: "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI: the auth database (users and permissions)}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?MLFLOW_AUTH_ADMIN_USERNAME is not set (MLFLOW_ADMIN_USERNAME in docker/.env)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?MLFLOW_AUTH_ADMIN_PASSWORD is not set (MLFLOW_ADMIN_PASSWORD in docker/.env)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is not set (docker/.env)}"
[ "$#" -gt 0 ] || { echo "usage: mlflow-basic-auth.sh COMMAND [ARG...]" >&2; exit 2; }

# READ: every account an admin creates can see every run and model, which is what a team server is for, without
# a grant per experiment and per ticker's registered model; registering versions and moving `champion` need EDIT on
# that model (granted per model) or an admin. Requests without valid credentials get nothing either way.
default_permission=READ

# configparser treats `%` as interpolation syntax: a literal one is written `%%`.
ini_value() {
    printf '%s' "$1" | sed 's/%/%%/g'
}

config_dir=$(dirname -- "$MLFLOW_AUTH_CONFIG_PATH")
mkdir -p -m 700 -- "$config_dir"
umask 077
partial="$MLFLOW_AUTH_CONFIG_PATH.partial"
{
    echo "# Written by mlflow-basic-auth.sh at server start; the admin comes from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD."
    echo "[mlflow]"
    echo "default_permission = $default_permission"
    echo "database_uri = $(ini_value "$MLFLOW_AUTH_DATABASE_URI")"
    echo "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
    echo "grant_default_workspace_access = false"
    # Checking a password (scrypt) costs about a quarter of a second of CPU and a run sends about 200 requests per
    # ticker: uncached, that made a one-ticker run take 150 s instead of 85 s. A worker remembers a good login for a
    # minute; a password change or deletion applies at once on the worker that handled it, on the other within it.
    echo "auth_cache_ttl_seconds = 60"
} >"$partial"
mv -f -- "$partial" "$MLFLOW_AUTH_CONFIG_PATH"
echo "mlflow-basic-auth: wrote $MLFLOW_AUTH_CONFIG_PATH (default_permission = $default_permission)"

exec "$@"
