#!/usr/bin/env bash
# The local stack: Apache Kafka (KRaft), Redis and Triton on 127.0.0.1, started by our own scripts.
#
#   stack.sh up [kafka|redis|triton ...]     start (no names = all); idempotent; writes $DFMOD_STACK_DIR/env
#   stack.sh down [kafka|redis|triton ...]   stop by PID: TERM, wait, KILL (no names = all)
#   stack.sh status [names]                  one line per service; exit 0 only if all named ones answer
#   stack.sh env                             print the env file (the worker's connection settings)
#
# Everything lives in $DFMOD_STACK_DIR (default <repo>/.stack): ports, pid files, logs, data.
# See deploy/local/README.md for the variables.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=stack

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# Set PICKED to the service names from the arguments, in start order; none means all.
pick_services() {
    local name
    PICKED=()
    for name in "$@"; do
        case " ${SERVICES[*]} " in
            *" $name "*) ;;
            *) die "unknown service '$name' (known: ${SERVICES[*]})" ;;
        esac
    done
    for name in "${SERVICES[@]}"; do
        if (($# == 0)) || [[ " $* " == *" $name "* ]]; then PICKED+=("$name"); fi
    done
}

# Start the services in parallel (the JVM and Triton start-ups overlap), each line prefixed by its name.
cmd_up() {
    local -a names pids
    pick_services "$@"
    names=("${PICKED[@]}")
    take_lock
    resolve_all_ports
    ensure_tls_material  # once, before the services start in parallel (secured mode only)
    local name rc=0 i t0=$SECONDS
    for name in "${names[@]}"; do
        (set -o pipefail; "$LOCAL_DIR/$name.sh" up 2>&1 | sed -u "s/^\([^[]\)/[$name] \1/" >&2) &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { rc=1; log "${names[$i]} FAILED"; }
    done
    write_env_file
    ((rc == 0)) || die "up failed (logs in $STACK_DIR/<service>/log)"
    log "up (${names[*]}) in $((SECONDS - t0))s; env: $STACK_DIR/env"
}

cmd_down() {
    local -a names
    pick_services "$@"
    names=("${PICKED[@]}")
    [[ -d "$STACK_DIR" ]] || { log "nothing to stop: $STACK_DIR does not exist"; return 0; }
    take_lock
    local i rc=0
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do
        "$LOCAL_DIR/${names[$i]}.sh" down || rc=1
    done
    return "$rc"
}

cmd_status() {
    local -a names
    pick_services "$@"
    names=("${PICKED[@]}")
    local name rc=0
    for name in "${names[@]}"; do
        "$LOCAL_DIR/$name.sh" status || rc=3
    done
    return "$rc"
}

cmd_env() {
    if [[ ! -d "$STACK_DIR/ports" ]]; then
        die "no stack in $STACK_DIR yet: run stack.sh up first"
    fi
    take_lock
    write_env_file
    cat "$STACK_DIR/env"
}

main() {
    local cmd="${1:-}"
    (($#)) && shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        env) cmd_env ;;
        *) usage ;;
    esac
}

main "$@"
