# shellcheck shell=bash
# The secure profile (CDC_PROFILE=secure), sourced by stack.sh: the lite topology (1 broker, 1
# Cassandra node, RF 1) with every connection encrypted and authenticated.
#
# - A local CA made with openssl at the first `up`; one server certificate (SAN 127.0.0.1-3 and
#   localhost) for the broker, PostgreSQL and Cassandra. Keys are unencrypted PKCS#8 in a folder
#   only this user can read.
# - Kafka: one SASL_SSL listener for clients and brokers (SCRAM-SHA-512 and -256), one SCRAM user
#   per client (admin, producer, consumer, cdcconsumer, connect, console), created when the KRaft
#   storage is formatted. The controller listener is SASL_SSL too, with PLAIN: KRaft controllers
#   cannot authenticate SCRAM users, whose credentials live in the metadata log they serve.
# - PostgreSQL: ssl=on, TCP clients only over TLS (`hostssl`; `hostnossl ... reject`), random
#   passwords for the application and replication roles.
# - Cassandra: client encryption required, PasswordAuthenticator and CassandraAuthorizer; an admin
#   superuser replaces the default `cassandra` role (which loses its login), one role per binary:
#   cdcconsumer may SELECT, MODIFY and ALTER (schema evolution adds columns) its keyspace, the
#   console may SELECT it.
#
# Every secret is a file under $STATE/secrets (mode 700); the binaries read them through
# KAFKA_CONFIG, DATABASE_URL_FILE and CASSANDRA_PASSWORD_FILE, never from their command line.

SECRETS="$STATE/secrets"
TLS="$STATE/tls"
KAFKA_USERS=(admin producer consumer cdcconsumer connect console)
CASSANDRA_ROLES=(admin cdcconsumer console)

is_secure() { [[ ${PROFILE:-} == secure ]]; }

secret() { cat "$SECRETS/$1"; } # <name>: a secret's value

# The CA, the server certificate and every password; made once per state folder.
secure_init() {
    [[ -f $SECRETS/.complete ]] && return 0
    command -v openssl >/dev/null || die "openssl is needed for the secure profile (apt-get install openssl)"
    say "secure profile: making a local CA, a server certificate and passwords in $SECRETS"
    (
        umask 077
        mkdir -p "$SECRETS" "$TLS"
        openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=cdc-pipeline local CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$TLS/ca.key" -out "$TLS/ca.crt" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
        printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,DNS:localhost" \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth,clientAuth" >"$TLS/server.ext"
        openssl x509 -req -days 825 -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
            -CAcreateserial -extfile "$TLS/server.ext" -out "$TLS/server.crt" 2>/dev/null
        cat "$TLS/server.key" "$TLS/server.crt" >"$TLS/server.pem"
        chmod 644 "$TLS/ca.crt"
        local name
        for name in "${KAFKA_USERS[@]/#/kafka-}" kafka-controller postgres-app postgres-replication \
            "${CASSANDRA_ROLES[@]/#/cassandra-}" cassandra-default; do
            openssl rand -hex 18 >"$SECRETS/$name.password"
        done
    ) || die "secure profile: openssl could not make the CA, the certificate or the passwords"
    secure_client_files
    (umask 077 && touch "$SECRETS/.complete")
}

# Configuration files for each client, passwords inside, readable by this user only.
secure_client_files() {
    (
        umask 077
        local user pw
        for user in "${KAFKA_USERS[@]}"; do
            pw=$(tr -d '\n' <"$SECRETS/kafka-$user.password")
            # librdkafka properties (--kafka-config / KAFKA_CONFIG)
            cat >"$SECRETS/kafka-$user.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanisms=SCRAM-SHA-512
sasl.username=$user
sasl.password=$pw
ssl.ca.location=$TLS/ca.crt
EOF
            # Java client properties (Kafka's tools, Connect's worker)
            cat >"$SECRETS/kafka-$user.java.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$user" password="$pw";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.crt
EOF
        done
        printf 'postgres://%s:%s@127.0.0.1:%s/%s?sslmode=verify-full&sslrootcert=%s\n' \
            "$POSTGRES_APP_USER" "$(secret postgres-app.password)" "$POSTGRES_PORT" "$POSTGRES_DB" \
            "$TLS/ca.crt" >"$SECRETS/database.url"
        printf '[PlainTextAuthProvider]\nusername = admin\npassword = %s\n' \
            "$(secret cassandra-admin.password)" >"$SECRETS/cqlsh-credentials"
        printf '[connection]\nssl = true\n[ssl]\ncertfile = %s\nvalidate = true\n' "$TLS/ca.crt" \
            >"$SECRETS/cqlshrc"
    )
}

# The passwords of the PostgreSQL roles come from the secrets folder.
secure_apply_passwords() {
    [[ -f $SECRETS/.complete ]] || return 0
    POSTGRES_APP_PASSWORD=$(secret postgres-app.password)
    POSTGRES_REPLICATION_PASSWORD=$(secret postgres-replication.password)
    export PGSSLMODE=verify-full PGSSLROOTCERT="$TLS/ca.crt"
}

# The settings one client binary needs, as NAME=value words for env(1). <client>: producer,
# consumer, cdcconsumer or console. Nothing on the other profiles.
client_env() {
    is_secure || return 0
    local client=$1 role=cdcconsumer
    [[ $client == console ]] && role=console
    printf '%s\n' "KAFKA_CONFIG=$SECRETS/kafka-$client.properties" \
        "DATABASE_URL_FILE=$SECRETS/database.url" \
        "CASSANDRA_USERNAME=$role" "CASSANDRA_PASSWORD_FILE=$SECRETS/cassandra-$role.password" \
        "CASSANDRA_CA=$TLS/ca.crt"
    # cdcconsumer may not create tables there: cassandra-schema.cql is applied by the admin role
    [[ $client == cdcconsumer ]] && echo "APPLY_SCHEMA=false"
    return 0
}

# --- Kafka ---

# server.properties lines for node <index>.
secure_kafka_properties() {
    local i=$1 controller_pw admin_pw
    controller_pw=$(secret kafka-controller.password)
    admin_pw=$(secret kafka-admin.password)
    cat <<EOF
listeners=SASL_SSL://127.0.0.1:${KAFKA_PORTS[$i]},CONTROLLER://127.0.0.1:${KAFKA_CTRL_PORTS[$i]}
advertised.listeners=SASL_SSL://127.0.0.1:${KAFKA_PORTS[$i]}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="$controller_pw" user_controller="$controller_pw";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.crt
ssl.endpoint.identification.algorithm=https
EOF
}

# Formats node <svc>'s storage with the cluster id and every client's SCRAM credentials. The
# arguments go through a private java @argfile: the passwords stay off the process list.
secure_kafka_format() {
    local svc=$1 cid=$2 dir="$STATE/kafka/$1" args="$SECRETS/kafka-format.args" user pw mech
    (
        umask 077
        {
            printf '%s\n' -Xmx256m "-Dlog4j2.configurationFile=$STATE/conf/log4j2-tools.properties" \
                -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties"
            for user in "${KAFKA_USERS[@]}"; do
                pw=$(secret "kafka-$user.password")
                for mech in SCRAM-SHA-512 SCRAM-SHA-256; do
                    printf '%s\n' --add-scram "$mech=[name=$user,password=$pw]"
                done
            done
        } >"$args"
    )
    java "@$args"
    local rc=$?
    rm -f "$args"
    return $rc
}

# Worker properties: the worker's own clients and the connectors' producers, consumers and admin
# clients all authenticate as `connect`.
secure_connect_properties() {
    local prefix line
    for prefix in "" producer. consumer. admin.; do
        while IFS= read -r line; do printf '%s%s\n' "$prefix" "$line"; done <"$SECRETS/kafka-connect.java.properties"
    done
}

# --- PostgreSQL ---

# postgresql.conf lines and the server's key and certificate, copied where the server reads them.
secure_postgres_conf() {
    local pg=$1
    mkdir -p "$pg/tls"
    cp "$TLS/server.crt" "$TLS/server.key" "$pg/tls/"
    chmod 600 "$pg/tls/server.key"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$pg/tls"
    cat <<EOF
ssl = on
ssl_cert_file = '$pg/tls/server.crt'
ssl_key_file = '$pg/tls/server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
}

secure_pg_hba() {
    cat <<EOF
# generated by stack/stack.sh (secure profile): superuser over the socket by peer auth; TCP clients
# only over TLS, by password
local     all             postgres                                peer
local     all             all                                     scram-sha-256
hostssl   all             all                     127.0.0.1/32    scram-sha-256
hostssl   replication     $POSTGRES_REPLICATION_USER              127.0.0.1/32    scram-sha-256
hostnossl all             all                     0.0.0.0/0       reject
hostnossl replication     all                     0.0.0.0/0       reject
EOF
}

# --- Cassandra ---

secure_cassandra_yaml() {
    cat <<EOF
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
client_encryption_options:
  enabled: true
  optional: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: $TLS/server.pem
  require_client_auth: false
EOF
}

# cqlsh as the admin role over TLS, credentials from a private file.
secure_cqlsh() {
    "$CQLSH_VENV/bin/cqlsh" --ssl --cqlshrc "$SECRETS/cqlshrc" --credentials "$SECRETS/cqlsh-credentials" \
        "${CASS_ADDRS[0]}" "${CASS_PORTS[0]}" "$@"
}

# Runs a CQL file of secrets as the default `cassandra` superuser (first start only).
secure_cqlsh_default() {
    (
        umask 077
        printf '[PlainTextAuthProvider]\nusername = cassandra\npassword = cassandra\n' >"$SECRETS/cqlsh-default"
    )
    "$CQLSH_VENV/bin/cqlsh" --ssl --cqlshrc "$SECRETS/cqlshrc" --credentials "$SECRETS/cqlsh-default" \
        "${CASS_ADDRS[0]}" "${CASS_PORTS[0]}" "$@"
}

# The admin role, made through the default superuser at the first start. Idempotent.
secure_cassandra_admin() {
    secure_cqlsh -e "SELECT role FROM system_auth.roles LIMIT 1" >/dev/null 2>&1 && return 0
    local cql="$SECRETS/admin.cql"
    (
        umask 077
        printf "CREATE ROLE IF NOT EXISTS admin WITH PASSWORD = '%s' AND SUPERUSER = true AND LOGIN = true;\n" \
            "$(secret cassandra-admin.password)" >"$cql"
    )
    # the default role appears a moment after the node starts serving
    local deadline=$((SECONDS + 120))
    until secure_cqlsh_default -f "$cql" >>"$LOGS/cassandra-schema.log" 2>&1; do
        if ((SECONDS >= deadline)); then
            rm -f "$cql"
            fail_service cassandra-schema "could not create the admin role as the default superuser"
        fi
        sleep 2
    done
    rm -f "$cql" "$SECRETS/cqlsh-default"
}

# After the schema: the default superuser loses its login, each binary gets its role and grants.
# Idempotent.
secure_cassandra_grants() {
    local cql="$SECRETS/roles.cql" role
    (
        umask 077
        {
            printf "ALTER ROLE cassandra WITH PASSWORD = '%s' AND SUPERUSER = false AND LOGIN = false;\n" \
                "$(secret cassandra-default.password)"
            for role in cdcconsumer console; do
                printf "CREATE ROLE IF NOT EXISTS %s WITH PASSWORD = '%s' AND LOGIN = true;\n" \
                    "$role" "$(secret "cassandra-$role.password")"
            done
            local grant
            for grant in SELECT MODIFY ALTER; do
                printf 'GRANT %s ON KEYSPACE %s TO cdcconsumer;\n' "$grant" "$CASSANDRA_KEYSPACE"
            done
            printf 'GRANT SELECT ON KEYSPACE %s TO console;\n' "$CASSANDRA_KEYSPACE"
        } >"$cql"
    )
    secure_cqlsh -f "$cql" >>"$LOGS/cassandra-schema.log" 2>&1 ||
        { rm -f "$cql"; fail_service cassandra-schema "could not create the binaries' roles and grants"; }
    rm -f "$cql"
}
