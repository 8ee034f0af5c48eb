#!/usr/bin/env bash
# Triton for the local stack: the tritonserver binary shipped in the nvidia-pytriton wheel (python backend
# only), run from its own venv, serving $TRITON_MODEL_REPOSITORY on 127.0.0.1. Usage: triton.sh up|down|status
# Variables: TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT, TRITON_MODEL_REPOSITORY (default
#   <repo>/triton_models, remembered per stack dir), TRITON_VENV (default <repo>/.venv-triton), TRITON_PYTHON
#   (interpreter that creates the venv, default python3), TRITON_EXTRA_ARGS (appended to tritonserver's
#   arguments), TRITON_START_TIMEOUT (s, default 180), TRITON_STOP_TIMEOUT (s, default 30).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=triton

# Pinned: nvidia-pytriton 0.7.0 ships tritonserver 2.51 with python-backend stubs for Python 3.8-3.13.
# It pins numpy<2, which clashes with the project's numpy 2, hence a venv of its own (.venv-triton)
# that also carries onnxruntime for the python-backend wrapper around the exported ONNX model.
PYTRITON_VERSION=0.7.0
TRITON_VENV="$(realpath -m "${TRITON_VENV:-$REPO_ROOT/.venv-triton}")"

triton_answers() {
    local code
    if command -v curl >/dev/null; then
        code="$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' \
            "http://127.0.0.1:$TRITON_HTTP_PORT/v2/health/ready" 2>/dev/null)" || true
    else
        code="$( (
            exec 3<>"/dev/tcp/127.0.0.1/$TRITON_HTTP_PORT" || exit 1
            printf 'GET /v2/health/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
            IFS=' ' read -r -t 2 _ status _ <&3 && printf '%s' "$status"
        ) 2>/dev/null)" || true
    fi
    [[ "$code" == 200 ]]
}

# Print "purelib libdir X.Y ok|missing" for the venv's interpreter; one call, no heavy imports.
venv_facts() {
    timeout 60 "$TRITON_VENV/bin/python" - <<'EOF'
import importlib.util as u, sys, sysconfig
ok = all(u.find_spec(m) is not None for m in ("pytriton", "numpy", "onnxruntime"))
print(sysconfig.get_paths()["purelib"], sysconfig.get_config_var("LIBDIR"),
      f"{sys.version_info[0]}.{sys.version_info[1]}", "ok" if ok else "missing")
EOF
}

ensure_venv() {
    local facts
    if [[ -x "$TRITON_VENV/bin/python" ]] && facts="$(venv_facts)" && [[ "$facts" == *" ok" ]]; then
        printf '%s' "$facts"
        return 0
    fi
    if [[ ! -x "$TRITON_VENV/bin/python" ]]; then
        log "creating $TRITON_VENV with ${TRITON_PYTHON:-python3}"
        timeout 300 "${TRITON_PYTHON:-python3}" -m venv "$TRITON_VENV" >&2 || die "could not create $TRITON_VENV"
    fi
    log "installing nvidia-pytriton==$PYTRITON_VERSION and onnxruntime into $TRITON_VENV"
    timeout 1200 "$TRITON_VENV/bin/pip" install -q "nvidia-pytriton==$PYTRITON_VERSION" onnxruntime >&2 \
        || die "pip install into $TRITON_VENV failed"
    facts="$(venv_facts)" && [[ "$facts" == *" ok" ]] || die "$TRITON_VENV still lacks pytriton/numpy/onnxruntime"
    printf '%s' "$facts"
}

# The repository to serve: the variable, else the one this stack dir last served, else <repo>/triton_models.
resolve_model_repository() {
    local file="$STACK_DIR/triton/model-repository" repo
    if [[ -n "${TRITON_MODEL_REPOSITORY:-}" ]]; then
        repo="$TRITON_MODEL_REPOSITORY"
    elif [[ -s "$file" ]]; then
        repo="$(<"$file")"
    else
        repo="$REPO_ROOT/triton_models"
    fi
    realpath -m "$repo"
}

triton_up() {
    local dir pid
    dir="$(svc_dir triton)"
    MODEL_REPO="$(resolve_model_repository)"
    if pid="$(svc_pid triton)"; then
        svc_check_config triton "$(svc_config TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT MODEL_REPO STACK_TLS)"
        if ! triton_answers; then
            log "pid $pid alive but not ready yet: waiting"
            svc_wait_ready triton "${TRITON_START_TIMEOUT:-180}" "200 from /v2/health/ready" triton_answers
        fi
        log "already running (pid $pid, grpc $TRITON_GRPC_PORT, http $TRITON_HTTP_PORT)"
        return 0
    fi
    local t0=$SECONDS facts purelib libdir pyver _ pt
    facts="$(ensure_venv)"
    read -r purelib libdir pyver _ <<<"$facts"
    pt="$purelib/pytriton/tritonserver"
    [[ -x "$pt/bin/tritonserver" ]] || die "no tritonserver binary at $pt/bin/tritonserver"
    [[ -x "$pt/python_backend_stubs/$pyver/triton_python_backend_stub" ]] \
        || die "pytriton $PYTRITON_VERSION has no python-backend stub for Python $pyver (it ships 3.8-3.13)"
    [[ -d "$MODEL_REPO" ]] || die "model repository $MODEL_REPO does not exist (set TRITON_MODEL_REPOSITORY)"
    mkdir -p "$dir"
    printf '%s\n' "$MODEL_REPO" >"$dir/model-repository"
    require_free_ports "$TRITON_HTTP_PORT" "$TRITON_GRPC_PORT" "$TRITON_METRICS_PORT"

    # The python backend runs the stub found beside libtriton_python.so, and the wheel keeps one stub per
    # Python version elsewhere; so assemble a backend directory of our own, as pytriton itself does.
    mkdir -p "$dir/backends/python"
    cp -f "$pt/backends/python/libtriton_python.so" "$pt/backends/python/triton_python_backend_utils.py" \
        "$pt/python_backend_stubs/$pyver/triton_python_backend_stub" "$dir/backends/python/"

    # LD_LIBRARY_PATH: the stub links libpython$pyver.so; without the venv interpreter's LIBDIR first it
    # may load another libpython (e.g. Debian's) whose standard library does not match the venv. The
    # wheel's own libs (nvidia_pytriton.libs) follow. PATH leads with the venv's bin because the embedded
    # interpreter locates its prefix (and thus the venv's site-packages) through the `python3` on PATH;
    # PYTHONPATH names site-packages explicitly so numpy/onnxruntime import even where that lookup differs.
    local ld="$libdir:$purelib/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local -a tls=()
    if [[ "$STACK_TLS" == 1 ]]; then  # gRPC over TLS (the HTTP port stays plaintext on 127.0.0.1 for probes)
        ensure_tls_material
        tls=(--grpc-use-ssl=true --grpc-server-cert="$TLS_DIR/server.crt" --grpc-server-key="$TLS_DIR/server.key"
             --grpc-root-cert="$TLS_DIR/ca.crt")
    fi
    # shellcheck disable=SC2086
    svc_launch triton env LD_LIBRARY_PATH="$ld" PATH="$TRITON_VENV/bin:$PATH" PYTHONPATH="$purelib" \
        PYTHONNOUSERSITE=1 \
        "$pt/bin/tritonserver" \
        --model-repository="$MODEL_REPO" \
        --backend-directory="$dir/backends" \
        --cache-directory="$pt/caches" \
        --http-address=127.0.0.1 --http-port="$TRITON_HTTP_PORT" \
        --grpc-address=127.0.0.1 --grpc-port="$TRITON_GRPC_PORT" \
        --metrics-address=127.0.0.1 --metrics-port="$TRITON_METRICS_PORT" \
        --exit-timeout-secs=10 --log-verbose=0 "${tls[@]}" \
        ${TRITON_EXTRA_ARGS:-}
    svc_record_config triton "$(svc_config TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT MODEL_REPO STACK_TLS)"
    svc_wait_ready triton "${TRITON_START_TIMEOUT:-180}" "200 from /v2/health/ready" triton_answers
    log "up in $((SECONDS - t0))s: pid $LAUNCHED_PID, grpc 127.0.0.1:$TRITON_GRPC_PORT, models from $MODEL_REPO"
}

main() {
    case "${1:-}" in
        up)
            take_lock
            TRITON_HTTP_PORT="$(resolve_port TRITON_HTTP_PORT)"
            TRITON_GRPC_PORT="$(resolve_port TRITON_GRPC_PORT)"
            TRITON_METRICS_PORT="$(resolve_port TRITON_METRICS_PORT)"
            triton_up
            ;;
        down) take_lock; svc_stop triton "${TRITON_STOP_TIMEOUT:-30}" ;;
        status)
            TRITON_HTTP_PORT="$(peek_port TRITON_HTTP_PORT)"
            TRITON_GRPC_PORT="$(peek_port TRITON_GRPC_PORT)"
            TRITON_METRICS_PORT="$(peek_port TRITON_METRICS_PORT)"
            svc_status_line triton triton_answers
            ;;
        *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
    esac
}

main "$@"
