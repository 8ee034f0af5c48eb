#!/usr/bin/env bash
# Apache Kafka for the local stack: one KRaft node (broker + controller) on 127.0.0.1, jars from Maven
# Central, data in $DFMOD_STACK_DIR/kafka. Usage: kafka.sh up|down|status
# Variables: KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_EVENTS_PARTITIONS (default 4),
#   KAFKA_VERDICTS_PARTITIONS (default 4), KAFKA_VERSION (default: the pin below), KAFKA_HEAP_OPTS,
#   KAFKA_START_TIMEOUT (s, default 120), KAFKA_STOP_TIMEOUT (s, default 30), DFMOD_TOOLS_DIR.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=kafka

# Pinned: 4.4.0 is the newest Kafka release on Maven Central (checked 2026-11); its classes target Java 17
# (class file major 61), the JDK installed here, and kafka-python 3.0.12 (the worker's client) produces,
# consumes in a group and commits offsets against it (tests/integration/test_stack.py). Kafka 4 removed
# ZooKeeper and the pre-2.1 protocol versions, so neither 3.x habits nor old clients carry over.
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOME="$TOOLS_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"

kafka_answers() { port_answers "$KAFKA_PORT"; }

# Resolve the broker's jars once into .tools/kafka-<version>/libs (a marker file says "complete").
ensure_jars() {
    [[ -f "$KAFKA_HOME/.complete" ]] && return 0
    command -v java >/dev/null || die "java not found (Kafka ${KAFKA_VERSION} needs Java 17+)"
    command -v mvn >/dev/null || die "mvn not found (it resolves the Kafka jars from Maven Central)"
    mkdir -p "$TOOLS_DIR"
    (
        # Two stacks starting at once must not write the same libs folder.
        exec 8>"$TOOLS_DIR/.kafka-$KAFKA_VERSION.lock"
        flock -w 900 8 || die "timed out waiting for $TOOLS_DIR/.kafka-$KAFKA_VERSION.lock"
        [[ -f "$KAFKA_HOME/.complete" ]] && exit 0
        local tmp="$KAFKA_HOME.tmp.$$" t0=$SECONDS
        rm -rf "$tmp"
        log "resolving Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
        timeout "${KAFKA_MVN_TIMEOUT:-900}" mvn -q -B -Dstyle.color=never -f "$LOCAL_DIR/kafka/pom.xml" \
            -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
            dependency:copy-dependencies 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g; /^[[:space:]]*$/d' >&2 \
            || { rm -rf "$tmp"; die "mvn could not resolve Kafka $KAFKA_VERSION"; }
        [[ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13 jar missing after mvn"
        rm -rf "$KAFKA_HOME"
        mv "$tmp" "$KAFKA_HOME"
        touch "$KAFKA_HOME/.complete"
        log "jars resolved in $((SECONDS - t0))s ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
    )
}

write_configs() {
    local dir="$1" secured_listeners=""
    if [[ "$STACK_TLS" == 1 ]]; then
        secured_listeners=",SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT"
    fi
    cat >"$dir/server.properties" <<EOF
# Written by deploy/local/kafka.sh at every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
# Dynamic quorum (KIP-853), bootstrapped by \`StorageTool format --standalone\`.
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT$secured_listeners
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT$secured_listeners
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# One node: every internal topic has one replica, and the defaults (3) would keep them from being created.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A dev broker: the first consumer of a group should not wait 3 s for others to join.
group.initial.rebalance.delay.ms=0
# Small media travel inline (base64) in events; 16 MiB keeps a demo portrait well inside one record.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
num.partitions=1
auto.create.topics.enable=true
log.retention.hours=24
EOF
    if [[ "$STACK_TLS" == 1 ]]; then
        # Secured mode: SCRAM-SHA-512 over TLS, and TLS with client certificates, behind the StandardAuthorizer.
        # PLAINTEXT stays on 127.0.0.1 for the stack's own administration (topics, ACLs, test producers): its
        # ANONYMOUS principal, like the controller's, is a super user. Workers use the secured listeners.
        cat >>"$dir/server.properties" <<EOF
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS
sasl.enabled.mechanisms=SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# OAUTHBEARER with Kafka's unsecured-JWS validator (unsigned tokens, principal = the "sub" claim): a dev stand-in
# for an identity provider; production brokers validate signed tokens against the provider's JWKS.
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="dfmod-broker";
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
EOF
    fi
    cat >"$dir/log4j2.properties" <<'EOF'
# Kafka 4 logs through log4j2 (via slf4j); one console appender, which kafka.sh sends to kafka/log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${env:KAFKA_LOG_LEVEL:-INFO}
rootLogger.appenderRef.out.ref = STDOUT
logger.cfg.name = org.apache.kafka.common.config.AbstractConfig
logger.cfg.level = WARN
EOF
}

# Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding; one starting with '-'
# would read as an option on the command line, so draw again (Kafka's own generator does the same).
random_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && { printf '%s' "$id"; return 0; }
    done
}

# Format the storage once. The controller's address is written into the metadata log by --standalone,
# so a changed controller port means a fresh log (this is a dev stack: the data is disposable).
ensure_formatted() {
    local dir="$1" stamp="$1/formatted-for" want cid
    want="controller=127.0.0.1:$KAFKA_CONTROLLER_PORT version=$KAFKA_VERSION secured=$STACK_TLS"
    if [[ -f "$dir/data/meta.properties" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    if [[ -d "$dir/data" ]]; then
        log "storage was formatted for '$(cat "$stamp" 2>/dev/null)', now '$want': wiping $dir/data"
    fi
    rm -rf "$dir/data"
    cid="$(random_cluster_id)"
    local -a scram=()
    if [[ "$STACK_TLS" == 1 ]]; then  # the worker's SCRAM user, in the metadata log from the start
        scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$(<"$TLS_DIR/kafka-password")]")
    fi
    log "formatting storage (cluster id $cid)"
    timeout 120 java -Xmx256m -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$KAFKA_LIBS/*" \
        kafka.tools.StorageTool format --cluster-id "$cid" --config "$dir/server.properties" --standalone \
        "${scram[@]}" >>"$dir/log" 2>&1 || die "storage format failed; log tail:$(log_tail kafka)"
    printf '%s\n' "$cid" >"$dir/cluster.id"
    printf '%s\n' "$want" >"$stamp"
}

ensure_topics() {
    local dir="$1" t0=$SECONDS
    rm -f "$dir/topics.ok"
    # shellcheck disable=SC2086
    timeout "$((${KAFKA_START_TIMEOUT:-120} + 30))" java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        -cp "$KAFKA_LIBS/*" "$LOCAL_DIR/kafka/EnsureTopics.java" \
        "127.0.0.1:$KAFKA_PORT" "${KAFKA_START_TIMEOUT:-120}" \
        "media.events:${KAFKA_EVENTS_PARTITIONS:-4}" \
        "media.verdicts:${KAFKA_VERDICTS_PARTITIONS:-4}" \
        "media.events.dlq:1" \
        "media.events.retry:${KAFKA_EVENTS_PARTITIONS:-4}" >"$dir/topics.out" 2>&1 \
        || die "topic creation failed:$(sed 's/^/    | /' "$dir/topics.out")$(log_tail kafka 20)"
    sed 's/^/    /' "$dir/topics.out" >&2
    if [[ "$STACK_TLS" == 1 ]]; then
        timeout 120 java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$KAFKA_LIBS/*" \
            "$LOCAL_DIR/kafka/EnsureAcls.java" "127.0.0.1:$KAFKA_PORT" "User:$KAFKA_USER,User:$KAFKA_CERT_USER" \
            dfmod-worker media.events,media.events.retry media.verdicts,media.events.dlq,media.events.retry \
            >"$dir/acls.out" 2>&1 || die "ACL creation failed:$(sed 's/^/    | /' "$dir/acls.out")"
        sed 's/^/    /' "$dir/acls.out" >&2
    fi
    touch "$dir/topics.ok"
    log "topics ready in $((SECONDS - t0))s"
}

kafka_up() {
    local dir pid
    dir="$(svc_dir kafka)"
    if pid="$(svc_pid kafka)"; then
        svc_check_config kafka "$(svc_config KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_VERSION STACK_TLS)"
        if ! kafka_answers; then
            log "pid $pid alive but not answering yet: waiting"
            svc_wait_ready kafka "${KAFKA_START_TIMEOUT:-120}" "listener on 127.0.0.1:$KAFKA_PORT" kafka_answers
        fi
        [[ -f "$dir/topics.ok" ]] || ensure_topics "$dir"
        log "already running (pid $pid, port $KAFKA_PORT)"
        return 0
    fi
    local t0=$SECONDS
    ensure_jars
    ensure_tls_material
    require_free_ports "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" ${KAFKA_SASL_PORT:-} ${KAFKA_SSL_PORT:-}
    mkdir -p "$dir"
    write_configs "$dir"
    ensure_formatted "$dir"
    rm -f "$dir/topics.ok"
    local t1=$SECONDS
    # shellcheck disable=SC2086
    svc_launch kafka java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
    svc_record_config kafka "$(svc_config KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_VERSION STACK_TLS)"
    svc_wait_ready kafka "${KAFKA_START_TIMEOUT:-120}" "listener on 127.0.0.1:$KAFKA_PORT" kafka_answers
    log "listening after $((SECONDS - t1))s (pid $LAUNCHED_PID)"
    ensure_topics "$dir"
    log "up in $((SECONDS - t0))s: bootstrap 127.0.0.1:$KAFKA_PORT"
}

main() {
    case "${1:-}" in
        up)
            take_lock
            KAFKA_PORT="$(resolve_port KAFKA_PORT)"
            KAFKA_CONTROLLER_PORT="$(resolve_port KAFKA_CONTROLLER_PORT)"
            if [[ "$STACK_TLS" == 1 ]]; then
                KAFKA_SASL_PORT="$(resolve_port KAFKA_SASL_PORT)"
                KAFKA_SSL_PORT="$(resolve_port KAFKA_SSL_PORT)"
            fi
            kafka_up
            ;;
        down) take_lock; svc_stop kafka "${KAFKA_STOP_TIMEOUT:-30}" ;;
        status)
            KAFKA_PORT="$(peek_port KAFKA_PORT)"
            KAFKA_CONTROLLER_PORT="$(peek_port KAFKA_CONTROLLER_PORT)"
            svc_status_line kafka kafka_answers
            ;;
        *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
    esac
}

main "$@"
