#!/usr/bin/env bash
# Redis for the local stack: Debian's redis-server on 127.0.0.1:$REDIS_PORT, no persistence, under our
# own PID handling (--daemonize no). Usage: redis.sh up|down|status
# Variables: REDIS_PORT, REDIS_START_TIMEOUT (s, default 20), REDIS_STOP_TIMEOUT (s, default 10).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=redis

redis_answers() {
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
        svc_check_config redis "$(svc_config REDIS_PORT)"
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
    svc_launch redis redis-server \
        --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --daemonize no --supervised no --logfile "" \
        --save "" --appendonly no --dir "$dir/data"
    svc_record_config redis "$(svc_config REDIS_PORT)"
    svc_wait_ready redis "${REDIS_START_TIMEOUT:-20}" "PONG on 127.0.0.1:$REDIS_PORT" redis_answers
    log "up in $((SECONDS - t0))s: pid $LAUNCHED_PID, redis://127.0.0.1:$REDIS_PORT/0"
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
