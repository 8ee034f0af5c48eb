# shellcheck shell=bash disable=SC2034  # LOCAL_DIR, TOOLS_DIR, SERVICES, LAUNCHED_PID: read by the sourcing scripts
# Shared helpers of the local stack scripts (sourced, never run). One job: paths, ports, PIDs, waiting.
#
# A service is a process we start with setsid (so it leads its own process group and outlives the
# calling shell), whose "PID STARTTIME" we keep in $DFMOD_STACK_DIR/<service>/pid. The start time
# (field 22 of /proc/PID/stat) guards against a recycled PID: a pid file only counts while both match.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$REPO_ROOT/deploy/local"
STACK_DIR="$(realpath -m "${DFMOD_STACK_DIR:-$REPO_ROOT/.stack}")"
TOOLS_DIR="$(realpath -m "${DFMOD_TOOLS_DIR:-$REPO_ROOT/.tools}")"
export DFMOD_STACK_DIR="$STACK_DIR"
SERVICES=(redis kafka triton)

# Ports live below Linux's ephemeral range (32768+), so an outgoing connection cannot already hold one.
PORT_MIN=20000
PORT_MAX=32000

log() { printf '[%s] %s\n' "${SVC:-stack}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

svc_dir() { printf '%s/%s' "$STACK_DIR" "$1"; }

# --- locking -----------------------------------------------------------------------------------------
# One `up`/`down` at a time per stack dir. stack.sh takes the lock once and exports DFMOD_STACK_LOCKED
# so the per-service scripts it runs do not wait on their own parent. Servers are started with fd 9
# closed, otherwise a server would hold the lock for its whole life.
take_lock() {
    [[ -n "${DFMOD_STACK_LOCKED:-}" ]] && return 0
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    local timeout_s="${DFMOD_STACK_LOCK_TIMEOUT:-300}"
    flock -w "$timeout_s" 9 || die "another stack.sh holds $STACK_DIR/.lock for more than ${timeout_s}s"
    export DFMOD_STACK_LOCKED=1
}

# --- ports -------------------------------------------------------------------------------------------
# Something answers on 127.0.0.1:PORT (a connect succeeds).
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print the port for variable NAME: the environment wins (and is remembered), then the remembered one,
# then a random free one (remembered). Remembering lets status/down/env/re-up agree without the variable.
resolve_port() {
    local name="$1" file="$STACK_DIR/ports/$1" port
    mkdir -p "$STACK_DIR/ports"
    if [[ -n "${!name:-}" ]]; then
        port="${!name}"
        [[ "$port" =~ ^[0-9]+$ ]] || die "$name=$port is not a port number"
    elif [[ -s "$file" ]]; then
        port="$(<"$file")"
    else
        local taken=" " f tries=0
        for f in "$STACK_DIR"/ports/*; do [[ -s "$f" ]] && taken+="$(<"$f") "; done
        while :; do
            port=$((PORT_MIN + RANDOM % (PORT_MAX - PORT_MIN)))
            [[ "$taken" == *" $port "* ]] || port_answers "$port" || break
            tries=$((tries + 1))
            ((tries < 200)) || die "no free port found for $name"
        done
    fi
    printf '%s\n' "$port" >"$file"
    printf '%s' "$port"
}

# Print the port NAME would get, without choosing or remembering one ("unset" when there is none yet).
peek_port() {
    local name="$1" file="$STACK_DIR/ports/$1"
    if [[ -n "${!name:-}" ]]; then printf '%s' "${!name}"
    elif [[ -s "$file" ]]; then printf '%s' "$(<"$file")"
    else printf 'unset'; fi
}

# Resolve every port of the stack and export it, so child scripts see the same values.
resolve_all_ports() {
    local name
    for name in KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT \
        $(secured_ports); do
        printf -v "$name" '%s' "$(resolve_port "$name")"
        export "${name?}"
    done
}

# The env file tells what the stack dir remembers (the services' scripts may have corrected a port),
# so the remembered value wins over the variable here; a port never chosen yet is chosen now.
# --- secured mode (DFMOD_STACK_TLS=1) ---------------------------------------------------------------------
# Redis with TLS and an ACL user, Triton with gRPC TLS. The certificates come from a throwaway CA made at
# the first secured start, in $STACK_DIR/tls (never committed): server certificate for 127.0.0.1/localhost,
# a client certificate for mutual TLS, and the Redis user's random password.
TLS_DIR="$STACK_DIR/tls"
STACK_TLS="${DFMOD_STACK_TLS:-0}"
if [[ "$STACK_TLS" == 0 && -e "$STACK_DIR/tls/enabled" ]]; then STACK_TLS=1; fi  # the stack dir remembers
REDIS_USER=dfmod
KAFKA_USER=dfmod-worker  # SCRAM-SHA-512 on the SASL_SSL listener; the client certificate's CN on the SSL one
KAFKA_CERT_USER=dfmod-client
secured_ports() { [[ "$STACK_TLS" == 1 ]] && echo KAFKA_SASL_PORT KAFKA_SSL_PORT; return 0; }

ensure_tls_material() {
    [[ "$STACK_TLS" == 1 ]] || return 0
    if [[ -s "$TLS_DIR/server.crt" && -s "$TLS_DIR/client.crt" && -s "$TLS_DIR/kafka-password" ]]; then
        : >"$TLS_DIR/enabled"
        return 0
    fi
    command -v openssl >/dev/null || die "openssl missing (apt-get install openssl)"
    mkdir -p "$TLS_DIR" && chmod 700 "$TLS_DIR"
    local d="$TLS_DIR" name usage
    timeout 60 openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=dfmod local stack CA" \
        -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null || die "openssl: CA"
    for name in server client; do
        usage=clientAuth
        [[ $name == server ]] && usage=serverAuth
        timeout 60 openssl req -newkey rsa:2048 -nodes -subj "/CN=dfmod-$name" \
            -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null || die "openssl: $name key"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' "$usage" >"$d/$name.ext"
        timeout 60 openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
            -days 30 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null || die "openssl: $name certificate"
    done
    timeout 10 openssl rand -hex 24 >"$d/redis-password"
    timeout 10 openssl rand -hex 24 >"$d/kafka-password"
    # Kafka reads PEM key stores: the key (PKCS#8, unencrypted) and its certificate chain in one file.
    cat "$d/server.key" "$d/server.crt" >"$d/server-keystore.pem"
    chmod 600 "$d"/*.key "$d/redis-password" "$d/kafka-password" "$d/server-keystore.pem"
    : >"$d/enabled"
    log "secured mode: a throwaway CA and certificates in $d"
}

write_env_file() {
    local name
    for name in KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT \
        $(secured_ports); do
        if [[ -s "$STACK_DIR/ports/$name" ]]; then
            printf -v "$name" '%s' "$(<"$STACK_DIR/ports/$name")"
        else
            printf -v "$name" '%s' "$(resolve_port "$name")"
        fi
    done
    local tmp="$STACK_DIR/env.tmp.$$" cache_scheme=redis
    [[ "$STACK_TLS" == 1 ]] && cache_scheme=rediss
    cat >"$tmp" <<EOF
# Written by deploy/local/stack.sh; the worker's connection settings for this stack.
# Use: set -a; . $STACK_DIR/env; set +a
DFMOD_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
DFMOD_KAFKA__MAX_MESSAGE_BYTES=16777216
DFMOD_CACHE__URL=$cache_scheme://127.0.0.1:$REDIS_PORT/0
DFMOD_TRITON__URL=127.0.0.1:$TRITON_GRPC_PORT
TRITON_HTTP_URL=http://127.0.0.1:$TRITON_HTTP_PORT
DFMOD_STACK_DIR=$STACK_DIR
KAFKA_PORT=$KAFKA_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
REDIS_PORT=$REDIS_PORT
TRITON_HTTP_PORT=$TRITON_HTTP_PORT
TRITON_GRPC_PORT=$TRITON_GRPC_PORT
TRITON_METRICS_PORT=$TRITON_METRICS_PORT
EOF
    if [[ "$STACK_TLS" == 1 && -s "$TLS_DIR/redis-password" ]]; then
        cat >>"$tmp" <<EOF
# Secured mode (DFMOD_STACK_TLS=1): Redis over TLS as ACL user $REDIS_USER, Triton gRPC over TLS.
DFMOD_CACHE__USERNAME=$REDIS_USER
DFMOD_CACHE__PASSWORD=$(<"$TLS_DIR/redis-password")
DFMOD_CACHE__TLS_CA_FILE=$TLS_DIR/ca.crt
DFMOD_TRITON__TLS=true
DFMOD_TRITON__TLS_CA_FILE=$TLS_DIR/ca.crt
DFMOD_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_SASL_PORT
DFMOD_KAFKA__SECURITY_PROTOCOL=SASL_SSL
DFMOD_KAFKA__SASL_MECHANISM=SCRAM-SHA-512
DFMOD_KAFKA__SASL_USERNAME=$KAFKA_USER
DFMOD_KAFKA__SASL_PASSWORD=$(<"$TLS_DIR/kafka-password")
DFMOD_KAFKA__SSL_CAFILE=$TLS_DIR/ca.crt
# The SSL listener (mutual TLS, principal $KAFKA_CERT_USER) and the stack's own PLAINTEXT admin listener.
KAFKA_SASL_PORT=$KAFKA_SASL_PORT
KAFKA_SSL_PORT=$KAFKA_SSL_PORT
KAFKA_ADMIN_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
DFMOD_STACK_TLS_DIR=$TLS_DIR
EOF
    fi
    chmod 600 "$tmp"
    mv -f "$tmp" "$STACK_DIR/env"
}

# --- processes ---------------------------------------------------------------------------------------
# Set PS_STATE, PS_PGRP, PS_START of PID (or PID/task/TID) from /proc without forking; false if gone.
# The command name in the stat line may hold spaces and parentheses, so the fields are cut after the last ')'.
read_stat() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    # shellcheck disable=SC2086
    set -- ${stat##*) }
    PS_STATE="$1" PS_PGRP="$3" PS_START="${20}"
}

# True while PID runs and is still the process that STARTTIME says. A zombie counts as gone once all its
# threads are (a JVM's main thread can be a zombie while its other threads still shut down).
proc_alive() {
    local pid="$1" start="$2" t
    read_stat "$pid" || return 1
    [[ "$PS_START" == "$start" ]] || return 1
    [[ "$PS_STATE" != Z ]] && return 0
    for t in /proc/"$pid"/task/*; do
        read_stat "$pid/task/${t##*/}" && [[ "$PS_STATE" != Z ]] && return 0
    done
    return 1
}

# Live PIDs whose process group is PGID (e.g. Triton's python-backend stubs).
group_members() {
    local pgid="$1" d
    for d in /proc/[0-9]*; do
        read_stat "${d#/proc/}" || continue
        [[ "$PS_PGRP" == "$pgid" && "$PS_STATE" != Z ]] && printf '%s\n' "${d#/proc/}"
    done
    return 0
}

# Print the PID of SERVICE if its pid file names a live process; drop a stale pid file.
svc_pid() {
    local file pid start
    file="$(svc_dir "$1")/pid"
    [[ -s "$file" ]] || return 1
    read -r pid start <"$file" || true
    if [[ -n "${pid:-}" && -n "${start:-}" ]] && proc_alive "$pid" "$start"; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

# Start "$@" as SERVICE in the background, its own session, output appended to <service>/log.
# Sets LAUNCHED_PID (no command substitution: the launch must happen in this shell, not a subshell).
svc_launch() {
    local svc="$1" dir pid
    shift
    dir="$(svc_dir "$svc")"
    mkdir -p "$dir"
    printf '\n===== %s start: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$dir/log"
    setsid "$@" >>"$dir/log" 2>&1 </dev/null 9>&- &
    pid=$!
    read_stat "$pid" || die "$svc exited at once; log tail:$(log_tail "$svc")"
    printf '%s %s\n' "$pid" "$PS_START" >"$dir/pid"
    LAUNCHED_PID="$pid"
}

log_tail() { printf '\n'; tail -n "${2:-40}" "$(svc_dir "$1")/log" 2>/dev/null | sed 's/^/    | /'; }

# Wait until CHECK (a command) succeeds, at most TIMEOUT seconds, while SERVICE's process lives.
# On failure: stop what we started, show the log tail, exit non-zero.
svc_wait_ready() {
    local svc="$1" timeout_s="$2" what="$3"
    shift 3
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if "$@"; then return 0; fi
        if ! svc_pid "$svc" >/dev/null; then
            die "$svc exited before $what; log tail ($(svc_dir "$svc")/log):$(log_tail "$svc")"
        fi
        sleep 0.25
    done
    local tail_text
    tail_text="$(log_tail "$svc")"
    svc_stop "$svc" 10 >/dev/null 2>&1 || true
    die "$svc: no $what within ${timeout_s}s (stopped it); log tail ($(svc_dir "$svc")/log):$tail_text"
}

# Stop SERVICE: TERM its main process, wait up to TIMEOUT s, then KILL its whole process group.
svc_stop() {
    local svc="$1" timeout_s="$2" pid start members deadline
    if ! pid="$(svc_pid "$svc")"; then
        log "not running"
        return 0
    fi
    read -r _ start <"$(svc_dir "$svc")/pid"
    log "stopping pid $pid (TERM, up to ${timeout_s}s)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout_s))
    while proc_alive "$pid" "$start" && ((SECONDS < deadline)); do sleep 0.1; done
    if proc_alive "$pid" "$start"; then
        log "still alive after ${timeout_s}s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # The group outlives its leader when children linger (e.g. Triton's python-backend stubs).
    deadline=$((SECONDS + 5))
    while :; do
        members="$(group_members "$pid")"
        proc_alive "$pid" "$start" || [[ -n "$members" ]] || break
        ((SECONDS < deadline)) || { log "could not stop pid $pid / group members: $members"; return 1; }
        # shellcheck disable=SC2086
        [[ -n "$members" ]] && kill -KILL $members 2>/dev/null || true
        sleep 0.1
    done
    rm -f "$(svc_dir "$svc")/pid"
    log "stopped"
}

# One status line on stdout; true when SERVICE runs and CHECK (a command) says it answers.
svc_status_line() {
    local svc="$1" check="$2" pid
    if pid="$(svc_pid "$svc")"; then
        if $check; then
            printf '%-7s running pid=%s answering (%s)\n' "$svc:" "$pid" "$(svc_endpoints "$svc")"
            return 0
        fi
        printf '%-7s running pid=%s NOT answering (%s)\n' "$svc:" "$pid" "$(svc_endpoints "$svc")"
        return 1
    fi
    printf '%-7s stopped\n' "$svc:"
    return 1
}

svc_endpoints() {
    case "$1" in
        redis) printf 'redis://127.0.0.1:%s' "$REDIS_PORT" ;;
        kafka) printf '127.0.0.1:%s, controller 127.0.0.1:%s' "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" ;;
        triton) printf 'http %s grpc %s metrics %s' "$TRITON_HTTP_PORT" "$TRITON_GRPC_PORT" "$TRITON_METRICS_PORT" ;;
    esac
}

# "NAME=value ..." of the named variables: what a service is (or was) started with.
svc_config() {
    local name out=""
    for name in "$@"; do out+="$name=${!name} "; done
    printf '%s' "${out% }"
}

svc_record_config() { printf '%s\n' "$2" >"$(svc_dir "$1")/started-with"; }

# A running service answers `up` only if it was started with the settings asked for now: a test that asks
# for other ports or another model repository must not silently get the old ones. On a mismatch the
# remembered ports are put back to the running ones, so status/env/down keep telling the truth.
svc_check_config() {
    local svc="$1" want="$2" file have pair
    file="$(svc_dir "$svc")/started-with"
    [[ -s "$file" ]] || return 0
    have="$(<"$file")"
    [[ "$have" == "$want" ]] && return 0
    for pair in $have; do
        [[ "${pair%%=*}" == *_PORT ]] && printf '%s\n' "${pair#*=}" >"$STACK_DIR/ports/${pair%%=*}"
    done
    die "running with '$have' but asked for '$want': run \`stack.sh down $svc\` first"
}

# Refuse to start on a port someone else already answers on (a clearer error than the server's own).
require_free_ports() {
    local p
    for p in "$@"; do
        port_answers "$p" && die "port $p on 127.0.0.1 is already in use by another process"
    done
    return 0
}

# Run with root rights: directly as root, else through sudo.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo -n "$@"; fi
}
