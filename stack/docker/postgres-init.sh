#!/usr/bin/env bash
# PostgreSQL bootstrap for docker-compose.yml: the postgres image runs this once, from
# /docker-entrypoint-initdb.d, when it initialises an empty data directory (the server then listens
# on its Unix socket only). It applies the same three phases as the local stack (stack/stack.sh):
#
#   1. stack/postgres-roles.sql        as the superuser on "postgres": roles and the database
#   2. postgres-schema.sql             as the application role on the database
#   3. stack/postgres-replication.sql  as the superuser on the database: grants and publication
#
# The SQL files are mounted read-only into $CDC_INIT_SQL_DIR. Names and credentials come from the
# environment, which docker-compose.yml sets from stack/topology.env's values.
#
# The image executes this file if it is executable and sources it otherwise, so all the work happens
# in a subshell: its shell options and variables never leak into the image's entrypoint.

cdc_postgres_init() (
    set -euo pipefail

    local sql_dir="${CDC_INIT_SQL_DIR:-/cdc-init}"
    local superuser="${POSTGRES_USER:-postgres}"
    local db="${POSTGRES_DB:?POSTGRES_DB must be set}"
    local app_user="${POSTGRES_APP_USER:?POSTGRES_APP_USER must be set}"
    local app_password="${POSTGRES_APP_PASSWORD:?POSTGRES_APP_PASSWORD must be set}"
    local repl_user="${POSTGRES_REPLICATION_USER:?POSTGRES_REPLICATION_USER must be set}"
    local repl_password="${POSTGRES_REPLICATION_PASSWORD:?POSTGRES_REPLICATION_PASSWORD must be set}"
    local publication="${DEBEZIUM_PUBLICATION_NAME:?DEBEZIUM_PUBLICATION_NAME must be set}"

    local file
    for file in postgres-roles.sql postgres-schema.sql postgres-replication.sql; do
        if [[ ! -r "$sql_dir/$file" ]]; then
            echo "postgres-init: $sql_dir/$file is missing or unreadable" >&2
            return 1
        fi
    done

    # Connect over the Unix socket of the temporary server, as the image's own entrypoint does.
    export PGHOST='' PGHOSTADDR=''
    local -a psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet)

    echo "postgres-init: roles ${app_user}, ${repl_user} and database ${db}"
    "${psql[@]}" --username "$superuser" --dbname postgres \
        -v app_user="$app_user" -v app_password="$app_password" \
        -v repl_user="$repl_user" -v repl_password="$repl_password" \
        -v db="$db" \
        -f "$sql_dir/postgres-roles.sql"

    # The image created POSTGRES_DB owned by the superuser before this script ran, so the
    # CREATE DATABASE in postgres-roles.sql found it and did nothing: hand it to the application
    # role, which then owns its public schema (PostgreSQL 15: pg_database_owner) and can create
    # the tables.
    "${psql[@]}" --username "$superuser" --dbname postgres \
        -v app_user="$app_user" -v db="$db" <<'SQL'
ALTER DATABASE :"db" OWNER TO :"app_user";
SQL

    echo "postgres-init: schema as ${app_user}"
    PGPASSWORD="$app_password" "${psql[@]}" --username "$app_user" --dbname "$db" \
        -f "$sql_dir/postgres-schema.sql"

    echo "postgres-init: replication grants and publication ${publication}"
    "${psql[@]}" --username "$superuser" --dbname "$db" \
        -v repl_user="$repl_user" -v publication="$publication" \
        -f "$sql_dir/postgres-replication.sql"

    # The superuser logs in over the Unix socket only: its TCP logins are rejected whatever the
    # password, ahead of the image's own "host all all all" rule (the first match decides). The
    # image restarts the server after this script, which reads the file then.
    local hba="${PGDATA:?PGDATA must be set}/pg_hba.conf"
    {
        printf '# the superuser never over TCP (stack/docker/postgres-init.sh)\n'
        printf 'host    all            %s    all    reject\n' "$superuser"
        printf 'host    replication    %s    all    reject\n' "$superuser"
        cat "$hba"
    } >"$hba.cdc" && mv "$hba.cdc" "$hba"

    echo "postgres-init: done"
)

cdc_postgres_init
