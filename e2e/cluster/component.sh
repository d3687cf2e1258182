#!/usr/bin/env bash
# Faults of one cluster component, for the chaos runs (bench/chaos.py) and by hand:
#   component.sh stop    apiserver|etcd|kubelet|containerd|controller-manager|scheduler|kube-proxy
#   component.sh start   (same names; up.sh's own start function: same flags, same health wait)
#   component.sh restart (stop, then start)
#   component.sh cut  CGROUP   drop every TCP packet that processes in cgroup v2 CGROUP (a path
#                              below the cgroup v2 root) send to the API server's port
#   component.sh mend CGROUP   stop dropping them
#   component.sh held CGROUP   prints "held" (exit 0) while the cut is in place, else "gone" (1)
# stop is SIGTERM (what a service manager sends), SIGKILL after 10 s. Pods keep running while
# the kubelet or containerd is down (containerd's shims hold them), as on a real node.
set -euo pipefail
if [[ "${KIND:-0}" == 1 ]]; then
  echo "component.sh drives the local cluster of up.sh, not kind" >&2; exit 1
fi
# shellcheck source=up.sh
source "$(dirname "${BASH_SOURCE[0]}")/up.sh"  # lib.sh and up.sh's functions; nothing runs
# shellcheck source=configs.sh
source "$CLUSTER_SCRIPTS/configs.sh"           # CONF (the components' config files)

CUT_CHAIN=CODEEXEC-CUT  # down.sh removes every CODEEXEC-* chain
# The raw table, not filter: kube-router rewrites the whole filter table with
# iptables-save/restore, and a chain made between its save and its restore is gone (a CI run
# saw `-A CODEEXEC-CUT` fail with "No chain/target/match by that name"). Nothing of the
# cluster's writes raw; a DROP there comes before conntrack, which changes nothing for a cut.
CUT_TABLE=raw

# The PID-file name and start function of a component.
component() {
  case "$1" in
    apiserver | kube-apiserver) echo "kube-apiserver start_apiserver" ;;
    etcd) echo "etcd start_etcd" ;;
    kubelet) echo "kubelet start_kubelet" ;;
    containerd) echo "containerd start_containerd" ;;
    controller-manager | kube-controller-manager) echo "kube-controller-manager start_controller_manager" ;;
    scheduler | kube-scheduler) echo "kube-scheduler start_scheduler" ;;
    kube-proxy) echo "kube-proxy start_kube_proxy" ;;
    *) die "unknown component '$1'" ;;
  esac
}

# Alive and not a zombie (nothing may reap a daemon whose parent, up.sh, is gone).
running() { [[ -e /proc/$1 ]] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

stop_component() {
  local name="$1" pid i
  if ! pid_alive "$name"; then log "$name is not running"; return; fi
  pid="$(cat "$(pidfile "$name")")"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then
    log "$name still running 10 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do running "$pid" || break; sleep 0.1; done
  fi
  running "$pid" && die "$name (pid $pid) does not stop"
  rm -f "$(pidfile "$name")"
}

start_component() {
  local name="$1" fn="$2"
  HOST_IP="$(cat "$CLUSTER/host-ip")"  # as up.sh found it: the certificates name it
  "$fn"
  log "$name up (pid $(cat "$(pidfile "$name")"))"
}

cut_rule() {
  printf '%s\n' -p tcp --dport "$APISERVER_PORT" -m cgroup --path "$1" \
    -m comment --comment "codeexec: $1 cut off from the API server" -j DROP
}

cut_off() {
  local -a rule
  mapfile -t rule < <(cut_rule "$1")
  ipt -N "$CUT_CHAIN" 2>/dev/null || true
  ipt -C OUTPUT -j "$CUT_CHAIN" 2>/dev/null || ipt -I OUTPUT 1 -j "$CUT_CHAIN"
  ipt -C "$CUT_CHAIN" "${rule[@]}" 2>/dev/null || ipt -A "$CUT_CHAIN" "${rule[@]}"
  cut_held "$1" || die "the cut of cgroup $1 is not in place after adding it"
  log "traffic from cgroup $1 to port $APISERVER_PORT dropped"
}

# Both the jump and the rule in place.
cut_held() {
  local -a rule
  mapfile -t rule < <(cut_rule "$1")
  ipt -C OUTPUT -j "$CUT_CHAIN" 2>/dev/null && ipt -C "$CUT_CHAIN" "${rule[@]}" 2>/dev/null
}

reconnect() {
  local -a rule
  mapfile -t rule < <(cut_rule "$1")
  while ipt -D "$CUT_CHAIN" "${rule[@]}" 2>/dev/null; do :; done
  if [[ -z "$(ipt -S "$CUT_CHAIN" 2>/dev/null | grep -v '^-N')" ]]; then
    ipt -D OUTPUT -j "$CUT_CHAIN" 2>/dev/null || true
    ipt -X "$CUT_CHAIN" 2>/dev/null || true
  fi
  log "traffic from cgroup $1 flows again"
}

ipt() { iptables -w -t "$CUT_TABLE" "$@"; }

main() {
  local action="${1:-}" what="${2:-}" spec name fn
  [[ -n "$what" ]] || die "usage: component.sh stop|start|restart COMPONENT | cut|mend|held CGROUP"
  case "$action" in
    cut) cut_off "$what"; return ;;
    mend) reconnect "$what"; return ;;
    held) if cut_held "$what"; then echo held; else echo gone; return 1; fi; return ;;
  esac
  spec="$(component "$what")" || exit 1
  read -r name fn <<<"$spec"
  take_lock  # not while up.sh or down.sh works on this cluster
  [[ -f "$UP_MARKER" ]] || die "no cluster up in $CLUSTER"
  case "$action" in
    stop) stop_component "$name" ;;
    start) start_component "$name" "$fn" ;;
    restart) stop_component "$name"; start_component "$name" "$fn" ;;
    *) die "unknown action '$action'" ;;
  esac
}

main "$@"
