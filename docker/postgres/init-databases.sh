#!/usr/bin/env bash
# Creates the databases of the stack, each owned by its service's login role:
#   mlflow      (MLflow tracking and model registry)   role $MLFLOW_DB_USER,  password $MLFLOW_DB_PASSWORD
#   mlflow_auth (MLflow's basic-auth users and permissions: its own tables and migrations, kept apart from the
#                tracking store's)                    role $MLFLOW_DB_USER as well: the same server uses both
#   prefect     (Prefect server)                        role $PREFECT_DB_USER, password $PREFECT_DB_PASSWORD
# The postgres image runs it once, on the first start with an empty data volume (/docker-entrypoint-initdb.d).
# It is idempotent and takes the server from libpq's usual variables, so it also runs against any server:
#   PGHOST=... PGPORT=... PGPASSWORD=... POSTGRES_USER=... MLFLOW_DB_PASSWORD=... PREFECT_DB_PASSWORD=... ./init-databases.sh
set -euo pipefail

: "${POSTGRES_USER:?POSTGRES_USER: the superuser to connect as}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set (docker/.env)}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set (docker/.env)}"

create_database() {  # database role password
    psql -v ON_ERROR_STOP=1 -X --no-password --username "$POSTGRES_USER" --dbname postgres \
        --set=db="$1" --set=role="$2" --set=password="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SQL
    echo "init-databases: database $1 owned by $2"
}

create_database mlflow "${MLFLOW_DB_USER:-mlflow}" "$MLFLOW_DB_PASSWORD"
create_database mlflow_auth "${MLFLOW_DB_USER:-mlflow}" "$MLFLOW_DB_PASSWORD"
create_database prefect "${PREFECT_DB_USER:-prefect}" "$PREFECT_DB_PASSWORD"
