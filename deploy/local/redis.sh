#!/usr/bin/env bash
# Redis for the local stack: Debian's redis-server on 127.0.0.1:$REDIS_PORT, no persistence, under our
# own PID handling (--daemonize no). Usage: redis.sh up|down|status
# Variables: REDIS_PORT, REDIS_START_TIMEOUT (s, default 20), REDIS_STOP_TIMEOUT (s, default 10).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=redis

redis_answers() {
    if [[ "$STACK_TLS" == 1 ]]; then  # TLS: redis-cli (Debian's redis-tools, a dependency of redis-server)
        [[ "$(REDISCLI_AUTH="$(<"$TLS_DIR/redis-password")" timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" \
            --tls --cacert "$TLS_DIR/ca.crt" --user "$REDIS_USER" PING 2>/dev/null)" == PONG ]]
        return
    fi
    # PING over bash's /dev/tcp: no redis-cli needed, and a bounded read instead of a hang.
    (
        exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ "$reply" == +PONG* ]]
    ) 2>/dev/null
}

ensure_redis_server() {
    command -v redis-server >/dev/null && return 0
    log "redis-server missing: installing Debian's redis-server (apt-get)"
    as_root timeout 300 apt-get update -qq || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq redis-server \
        || die "apt-get install redis-server failed"
    # The package starts a system-wide instance on 6379 where an init system runs; ours is separate.
    command -v redis-server >/dev/null || die "redis-server still not on PATH after installing it"
}

redis_up() {
    local dir pid
    dir="$(svc_dir redis)"
    if pid="$(svc_pid redis)"; then
        svc_check_config redis "$(svc_config REDIS_PORT STACK_TLS)"
        if redis_answers; then
            log "already running (pid $pid, port $REDIS_PORT)"
            return 0
        fi
        log "pid $pid alive but not answering yet: waiting"
        svc_wait_ready redis "${REDIS_START_TIMEOUT:-20}" "PONG on 127.0.0.1:$REDIS_PORT" redis_answers
        return 0
    fi
    ensure_redis_server
    require_free_ports "$REDIS_PORT"
    mkdir -p "$dir/data"
    local t0=$SECONDS
    local -a listen=(--port "$REDIS_PORT")
    if [[ "$STACK_TLS" == 1 ]]; then
        ensure_tls_material
        # TLS only (no plaintext port); the default user off; one user for the keys the worker uses.
        printf 'user default off\nuser %s on >%s ~dfmod:* &* +@all -@admin -@dangerous\n' \
            "$REDIS_USER" "$(<"$TLS_DIR/redis-password")" >"$dir/users.acl"
        chmod 600 "$dir/users.acl"
        listen=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$TLS_DIR/server.crt"
                --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.crt"
                --tls-auth-clients optional --aclfile "$dir/users.acl")
    fi
    svc_launch redis redis-server \
        --bind 127.0.0.1 "${listen[@]}" --protected-mode yes \
        --daemonize no --supervised no --logfile "" \
        --save "" --appendonly no --dir "$dir/data"
    svc_record_config redis "$(svc_config REDIS_PORT STACK_TLS)"
    svc_wait_ready redis "${REDIS_START_TIMEOUT:-20}" "PONG on 127.0.0.1:$REDIS_PORT" redis_answers
    local scheme=redis
    [[ "$STACK_TLS" == 1 ]] && scheme=rediss
    log "up in $((SECONDS - t0))s: pid $LAUNCHED_PID, $scheme://127.0.0.1:$REDIS_PORT/0"
}

main() {
    case "${1:-}" in
        up) take_lock; REDIS_PORT="$(resolve_port REDIS_PORT)"; redis_up ;;
        down) take_lock; svc_stop redis "${REDIS_STOP_TIMEOUT:-10}" ;;
        status) REDIS_PORT="$(peek_port REDIS_PORT)"; svc_status_line redis redis_answers ;;
        *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
    esac
}

main "$@"
