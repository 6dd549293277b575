# Shared settings for scripts/cluster/*. Sourced, not executed.
# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this

# The one pinned Kubernetes release. Verified on this host (cgroup v1, Debian
# bookworm's containerd 1.6.20): the 1.35 kubelet still accepts cgroup v1 with
# failCgroupV1: false and falls back to the configured cgroup driver for containerd
# 1.x (no CRI RuntimeConfig); upstream is removing both. Changing it rebuilds.
K8S_VERSION="v1.35.4"
K8S_STAGING_VERSION="v0.${K8S_VERSION#v1.}"   # k8s.io/api etc. of the same release
COREDNS_VERSION="v1.14.7"                     # github.com/coredns/coredns, the cluster DNS
CRICTL_VERSION="v1.34.0"                      # sigs.k8s.io/cri-tools, for scripts/cluster/down and debugging

CONVEYOR_CACHE="${CONVEYOR_CACHE:-/var/cache/conveyor}"
K8S_CACHE="$CONVEYOR_CACHE/kubernetes"
K8S_BIN="$K8S_CACHE/$K8S_VERSION/bin"
K8S_SRC="$K8S_CACHE/$K8S_VERSION/src"
K8S_GOMODCACHE="$K8S_CACHE/gomodcache"
K8S_GOCACHE="$K8S_CACHE/gocache"
# etcd: Debian's etcd-server package binary. Bookworm's 3.4.23 lacks the health
# endpoints kube-apiserver >= 1.31 relies on (backported to 3.4.29/3.5.11), so the
# trixie package (a Go binary, runs on bookworm) is fetched with apt into the cache.
ETCD_DEB_VERSION="3.5.16-4"
ETCD_DEB_SUITE="trixie"
ETCD_DIR="$CONVEYOR_CACHE/etcd/$ETCD_DEB_VERSION"
ETCD_BIN="$ETCD_DIR/usr/bin/etcd"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

CONVEYOR_STATE="${CONVEYOR_STATE:-/var/lib/conveyor}"
STATE="$CONVEYOR_STATE/cluster"
RUN="$STATE/run"
LOGS="$STATE/logs"
PKI="$STATE/pki"
KUBECONFIGS="$CONVEYOR_STATE/kubeconfigs"
CONNECTIONS="$CONVEYOR_STATE/connections"

NODE_NAME="conveyor-node"
HOST_IP="10.88.0.1"             # the bridge gateway: pods reach the host here
POD_CIDR="10.88.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SVC_IP="10.96.0.1"
BRIDGE="conveyor0"
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
CONTAINERD_ROOT="$STATE/containerd/root"
CONTAINERD_STATE="$STATE/containerd/state"
KUBELET_ROOT="$STATE/kubelet"
CNI_CONF_DIR="$STATE/cni/net.d"
CNI_BIN_DIR="/usr/lib/cni"
PAUSE_IMAGE="registry.k8s.io/pause:3.10.1-conveyor"
COREDNS_IMAGE="conveyor.local/coredns:${COREDNS_VERSION#v}"
CLUSTER_DNS_IP="10.96.0.10"
BUSYBOX_IMAGE="conveyor.local/busybox:1"   # a static busybox, imported for smoke tests

log()  { printf '>> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
# die WHAT HAPPENED / WHAT TO DO
die()  { printf 'error: %s\n' "$1" >&2; [[ -n "${2:-}" ]] && printf '  what to do: %s\n' "$2" >&2; exit 1; }

# bootstrap_fingerprint: what scripts/cluster/bootstrap applies depends on; `up` reruns bootstrap
# on a running cluster when it differs from the one bootstrap recorded in $STATE/bootstrap.applied.
bootstrap_fingerprint() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  cat "$dir/bootstrap" "$dir/lib.sh" "$dir/seccomp/buildah.json" "$dir/../../images/images.yaml" \
    "$dir/../../config/platform.yaml" | sha256sum | cut -d' ' -f1
}

need_root() { [[ $EUID -eq 0 ]] || die "this must run as root (it starts containerd, kubelet and changes iptables)" "rerun as root, e.g. sudo $0"; }
