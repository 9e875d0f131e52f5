#!/usr/bin/env bash
# First start of the compose Postgres: a role and database for the MLflow tracking server.
# The password arrives as an environment variable and is passed to psql as a variable, never spliced into SQL text.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$MLFLOW_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
