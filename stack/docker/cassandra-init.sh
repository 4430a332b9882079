#!/usr/bin/env bash
# One-shot Cassandra bootstrap for docker-compose.yml (service cassandra-init, cassandra image):
# applies cassandra-schema.cql through the first node once every node is healthy, then checks that
# each node sees the keyspace. The schema is idempotent, so running this again is harmless.
#
# Environment: CASSANDRA_HOSTS (space-separated, the first one applies the schema), CASSANDRA_PORT
# (default 9042), CASSANDRA_SCHEMA (path of the CQL file), CASSANDRA_KEYSPACE (checked afterwards),
# CASSANDRA_INIT_ATTEMPTS (default 30, 5 s apart).
set -euo pipefail

read -r -a hosts <<<"${CASSANDRA_HOSTS:-cassandra1}"
port="${CASSANDRA_PORT:-9042}"
schema="${CASSANDRA_SCHEMA:-/cassandra-schema.cql}"
keyspace="${CASSANDRA_KEYSPACE:-cdc_keyspace}"
attempts="${CASSANDRA_INIT_ATTEMPTS:-30}"

if [[ ! -r "$schema" ]]; then
    echo "cassandra-init: $schema is missing or unreadable" >&2
    exit 1
fi

# Retries cover a cluster that is up but still settling (gossip, schema agreement).
retry() {
    local what="$1"
    shift
    local attempt
    for ((attempt = 1; attempt <= attempts; attempt++)); do
        if "$@"; then
            return 0
        fi
        echo "cassandra-init: ${what} failed (attempt ${attempt}/${attempts}), retrying in 5 s" >&2
        sleep 5
    done
    echo "cassandra-init: giving up on ${what}" >&2
    return 1
}

echo "cassandra-init: applying ${schema} through ${hosts[0]}:${port}"
retry "applying the schema" \
    cqlsh "${hosts[0]}" "$port" --connect-timeout=30 --request-timeout=60 -f "$schema"

for host in "${hosts[@]}"; do
    retry "finding keyspace ${keyspace} on ${host}" \
        cqlsh "$host" "$port" --connect-timeout=30 -e "DESCRIBE KEYSPACE ${keyspace}" >/dev/null
    echo "cassandra-init: ${host} has keyspace ${keyspace}"
done

echo "cassandra-init: done"
