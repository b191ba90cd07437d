#!/usr/bin/env bash
# End-to-end run of the DaemonSet under a real kubelet, on this machine, as root, with no registry:
# a one-node Kubernetes 1.20 (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet on
# containerd + runc) in its own network namespace, a CNI bridge for ordinary pods, the reference vSensor in a
# second namespace; then daemonset/overlays/e2e is applied and what only a kubelet does is checked
# (see docs/deployment.md, "Proved on"). Everything started is torn down on exit, even on failure.
#
#   sudo scripts/k8s-e2e.sh          build what is missing (cached in $OSSENSOR_K8S_CACHE), run, tear down
#   sudo scripts/k8s-e2e.sh build    only build and cache (Kubernetes binaries, pause and ossensor images)
#
# Cold (nothing cached) the Kubernetes build takes ~7 min on 2 cores; warm, a run takes a few minutes.
# Exit status: 0 all checks passed, 1 a check failed (the line says which), 2 bad usage or not root.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S_CACHE=${OSSENSOR_K8S_CACHE:-/var/cache/ossensor-k8s}
# shellcheck source=scripts/k8s-e2e/build.sh
. "$ROOT/scripts/k8s-e2e/build.sh"

MODE=${1:-run}
case "$MODE" in run|build) ;; *) echo "usage: $0 [run|build]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "k8s-e2e: needs root (network namespaces, containerd, kubelet)" >&2; exit 2; }
command -v kubectl >/dev/null || { echo "k8s-e2e: needs a kubectl with kustomize v4+ on PATH to render daemonset/overlays/e2e" >&2; exit 2; }

# -- fixed names: one run at a time (a lock), all of them ours ----------------------------------------------
E=/var/lib/ossensor-e2e                 # state: etcd, pki, containerd root, kubelet root (the overlay names it)
R=/run/ossensor-e2e                     # sockets
NODE_NS=ossensor-e2e-node VS_NS=ossensor-e2e-vs
NODE=ossensor-e2e NODE_IP=10.250.23.1 VS_IP=10.250.23.2 VS_PORT=8443 POD_CIDR=10.244.23.0/24
SOCK=$R/containerd/containerd.sock
PIDS=()
T0=$SECONDS

mkdir -p "$K8S_CACHE"
exec 9>"$K8S_CACHE/.lock"
flock -n 9 || { echo "k8s-e2e: another run holds $K8S_CACHE/.lock" >&2; exit 2; }

k8s_build_all
k8s_ossensor_image "$ROOT"
[ "$MODE" = build ] && { k8s_log "cached in $K8S_CACHE ($((SECONDS - T0)) s)"; exit 0; }

IN_NODE=(nsenter "--net=/run/netns/$NODE_NS")   # not `ip netns exec`: it remounts /sys, hiding the cgroups
KC=("${IN_NODE[@]}" "$K8S_CACHE/bin/kubectl-1.20" --kubeconfig "$E/pki/admin.kubeconfig" --request-timeout=30s)
kc() { "${KC[@]}" "$@"; }
CTR=(ctr -a "$SOCK" -n k8s.io)

fail() { k8s_log "FAIL: $*"; exit 1; }
pass() { k8s_log "ok: $*"; }
# wait_until SECONDS WHAT COMMAND...: run COMMAND every 0.5 s until it succeeds; fail naming WHAT otherwise
wait_until() {
    local limit=$1 what=$2 t=$SECONDS; shift 2
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - t)) -lt "$limit" ] || fail "$what: not within $limit s"
        sleep 0.5
    done
    echo $((SECONDS - t))
}
start() { # NAME LOG COMMAND...: a daemon whose pid is remembered for the teardown
    local name=$1 log=$2; shift 2
    "$@" >"$log" 2>&1 &
    PIDS+=("$name:$!")
}

# -- teardown: on any exit ----------------------------------------------------------------------------------
teardown() {
    local rc=$? p pid
    set +e
    trap - EXIT INT TERM
    if [ $rc != 0 ] && [ -d "$E/logs" ]; then
        k8s_log "failed (status $rc); the last lines of each log:"
        for p in "$E"/logs/*.log; do echo "== $p"; grep -v ' not found$' "$p" | tail -n 8; done >&2
        mkdir -p "$K8S_CACHE/last-failure" && cp -r "$E/logs" "$K8S_CACHE/last-failure/" 2>/dev/null
    fi
    if [ $rc != 0 ] && [ -S "$SOCK" ]; then
        for p in talker sink; do echo "== pod $p"; kc describe pod $p | tail -n 12; kc logs $p --tail=10; done >&2 2>/dev/null
    fi
    if [ -S "$SOCK" ]; then   # containers first, while containerd still runs
        for c in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s KILL "$c" >/dev/null 2>&1; done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]#*:}; kill "$pid" 2>/dev/null
    done
    for _ in $(seq 20); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "${p#*:}" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break; sleep 0.5
    done
    for p in "${PIDS[@]}"; do kill -9 "${p#*:}" 2>/dev/null; done
    # shims our containerd started outlive it: found by our socket in their command line
    for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    # mounts under our directories (deepest first), then the namespaces and cgroups
    awk '{print $2}' /proc/self/mounts | grep -E "^($E|$R)(/|$)" | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"; done
    ip netns del $NODE_NS 2>/dev/null
    ip netns del $VS_NS 2>/dev/null
    find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} + 2>/dev/null
    rm -rf "$E" "$R"
    k8s_log "torn down ($((SECONDS - T0)) s in all)"
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

[ ! -e /run/netns/$NODE_NS ] || fail "namespace $NODE_NS was left by a killed run: removed now with the rest of its state; run again"
rm -rf "$E" "$R"
mkdir -p "$E/logs" "$E/pki" "$E/etc" "$E/cni" "$E/kubelet/seccomp" "$R/containerd"

# -- network: the node's namespace and the vSensor's, one veth between them --------------------------------
ip netns add $NODE_NS
ip netns add $VS_NS
ip link add oss23n type veth peer name oss23v
ip link set oss23n netns $NODE_NS
ip link set oss23v netns $VS_NS
ip -n $NODE_NS link set lo up
ip -n $NODE_NS addr add $NODE_IP/24 dev oss23n
ip -n $NODE_NS link set oss23n up
ip -n $NODE_NS route add default via $VS_IP
ip -n $VS_NS link set lo up
ip -n $VS_NS addr add $VS_IP/24 dev oss23v
ip -n $VS_NS link set oss23v up
ip -n $VS_NS route add $POD_CIDR via $NODE_IP
"${IN_NODE[@]}" sysctl -qw net.ipv4.ip_forward=1

# -- the reference vSensor, in its namespace ---------------------------------------------------------------
KEY=$(openssl rand -hex 24)
mkdir -p "$E/vs"
start vsensor "$E/logs/vsensor.log" env PYTHONPATH="$ROOT" VSENSOR_HMAC_KEY="$KEY" \
    nsenter --net=/run/netns/$VS_NS python3 -m ossensor vsensor --listen $VS_IP:$VS_PORT --out "$E/vs"
wait_until 30 "the vSensor listening" grep -q "listening on" "$E/logs/vsensor.log" >/dev/null

# -- PKI, tokens and kubeconfigs (openssl only) -------------------------------------------------------------
(
    cd "$E/pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -days 2 -subj /CN=ossensor-e2e-ca -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -subj /CN=kube-apiserver -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
        $NODE_IP > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext \
        -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    : > tokens.csv
    for who in "admin|admin|system:masters" "kubelet|system:node:$NODE|system:nodes" \
               "controller-manager|system:kube-controller-manager|system:masters" "scheduler|system:kube-scheduler|"; do
        IFS='|' read -r name user group <<<"$who"
        tok=$(openssl rand -hex 16)
        echo "$tok,$user,uid-$name${group:+,\"$group\"}" >> tokens.csv
        cat > "$name.kubeconfig" <<K
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$E/pki/ca.crt"}}]
users: [{name: $name, user: {token: "$tok"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $name}}]
current-context: e2e
K
    done
)

# -- control plane, in the node's namespace -----------------------------------------------------------------
B=$K8S_BIN
start etcd "$E/logs/etcd.log" "${IN_NODE[@]}" etcd --name e2e --data-dir "$E/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e2e=http://127.0.0.1:2380
start kube-apiserver "$E/logs/apiserver.log" "${IN_NODE[@]}" "$B/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address=$NODE_IP --secure-port=6443 --advertise-address=$NODE_IP \
    --tls-cert-file="$E/pki/apiserver.crt" --tls-private-key-file="$E/pki/apiserver.key" \
    --client-ca-file="$E/pki/ca.crt" --token-auth-file="$E/pki/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=10.0.0.0/24 --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$E/pki/sa.pub" --service-account-signing-key-file="$E/pki/sa.key" \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true --v=1
# the apiserver listens on the node address (kubectl below talks to 127.0.0.1: the same namespace)
sed -i "s|https://127.0.0.1:6443|https://$NODE_IP:6443|" "$E"/pki/*.kubeconfig
t=$(wait_until 120 "kube-apiserver ready" kc get --raw /readyz)
pass "kube-apiserver ready in $t s"
start kube-controller-manager "$E/logs/controller-manager.log" "${IN_NODE[@]}" "$B/kube-controller-manager" \
    --kubeconfig="$E/pki/controller-manager.kubeconfig" --service-account-private-key-file="$E/pki/sa.key" \
    --root-ca-file="$E/pki/ca.crt" --leader-elect=false --bind-address=127.0.0.1 --port=0 --v=1
start kube-scheduler "$E/logs/scheduler.log" "${IN_NODE[@]}" "$B/kube-scheduler" \
    --kubeconfig="$E/pki/scheduler.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 --port=0 --v=1

# -- containerd (its own root and socket) and the kubelet ----------------------------------------------------
cat > "$E/etc/containerd.toml" <<C
version = 2
root = "$E/containerd"
state = "$R/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:ossensor-e2e"
  # without CAP_SYS_RESOURCE here runc cannot lower oom_score_adj below ours
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E/cni"
C
cat > "$E/cni/10-ossensor-e2e.conflist" <<C
{"cniVersion": "0.4.0", "name": "ossensor-e2e", "plugins": [
  {"type": "bridge", "bridge": "oss23br", "isGateway": true, "isDefaultGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "dataDir": "$E/cni-ipam"}},
  {"type": "loopback"}]}
C
start containerd "$E/logs/containerd.log" "${IN_NODE[@]}" containerd --config "$E/etc/containerd.toml"
wait_until 30 "containerd answering" "${CTR[@]}" version >/dev/null
for img in "$K8S_CACHE/images/pause.tar" "$K8S_IMAGE_TAR"; do "${CTR[@]}" images import "$img" >/dev/null; done
"${CTR[@]}" images ls -q | grep -qx "$K8S_IMAGE" || fail "image $K8S_IMAGE not in containerd after import"

start kubelet "$E/logs/kubelet.log" "${IN_NODE[@]}" "$B/kubelet" --kubeconfig="$E/pki/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" --runtime-request-timeout=5m \
    --root-dir="$E/kubelet" --seccomp-profile-root="$E/kubelet/seccomp" --cgroup-driver=cgroupfs \
    --fail-swap-on=false --address=$NODE_IP --healthz-bind-address=127.0.0.1 --read-only-port=0 \
    --node-ip=$NODE_IP --hostname-override=$NODE --pod-infra-container-image=localhost/pause:ossensor-e2e \
    --sync-frequency=10s --eviction-hard='memory.available<100Mi' --v=1
t=$(wait_until 90 "node $NODE Ready" bash -c "${KC[*]@Q} get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True")
pass "node $NODE Ready $t s after the kubelet started"
wait_until 60 "the default service account" kc -n default get serviceaccount default >/dev/null

# -- the sensor: the project's manifests (overlay e2e) -------------------------------------------------------
kc create namespace ossensor --save-config >/dev/null
echo -n "$KEY" > "$E/key"
kc -n ossensor create secret generic ossensor-hmac --from-file=hmac-key="$E/key" --from-file=ca.pem="$E/vs/ca.pem" \
    --save-config >/dev/null
t_apply=$SECONDS
# kubectl 1.20's built-in kustomize (v2) predates inline `patches:`: the machine's newer kubectl renders the
# overlay (as `kubectl apply -k` does today) and the cluster's kubectl applies it
render_overlay() { kubectl kustomize "$ROOT/daemonset/overlays/e2e"; }
render_overlay | kc apply -f - >/dev/null
pod_ready() { [ "$(kc -n ossensor get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_ready_pod() { # echoes the Running and Ready pod that is not $1
    local p
    for _ in $(seq 240); do
        for p in $(kc -n ossensor get pods -l app.kubernetes.io/name=ossensor -o jsonpath='{.items[*].metadata.name}'); do
            [ "$p" != "${1:-}" ] && pod_ready "$p" && { echo "$p"; return 0; }
        done
        sleep 0.5
    done
    return 1
}
POD=$(wait_ready_pod) || fail "the DaemonSet's pod Running and Ready (probes answered) within 120 s"
pass "pod $POD Running and Ready $((SECONDS - t_apply)) s after kubectl apply -k (readiness probe answered)"
logs() { kc -n ossensor logs "$1" -c ossensor; }
logs_have() { logs "$1" | grep -Eq -- "$2"; }

# start lines at level 0; statistics at level 1; the key never
wait_until 30 "start lines in kubectl logs" logs_have "$POD" " L0 interface \S+ index=[0-9]+ selected: " >/dev/null
L=$(logs "$POD")
for re in " L0 ossensor \S+ starting: sensor=$NODE " " L0 config VSENSOR_HMAC_KEY=<redacted>" \
          " L0 config VSENSOR_HOSTNAME=$VS_IP" " L0 interface oss23n index=[0-9]+ selected: " \
          " L0 shipping to https://$VS_IP:$VS_PORT "; do
    grep -Eq -- "$re" <<<"$L" || fail "kubectl logs: no line matching '$re'"
done
! grep -q "$KEY" <<<"$L" || fail "kubectl logs shows the HMAC key"
pass "kubectl logs: start lines (configuration, key redacted, interfaces chosen and why)"
wait_until 60 "a level-1 statistics line" logs_have "$POD" " L1 stats captured=[0-9]+ " >/dev/null
pass "kubectl logs: level-1 statistics"

# the kubelet applied the securityContext: seccomp filter, no capability once started, no_new_privs
st=$(kc -n ossensor exec "$POD" -c ossensor -- cat /proc/1/status)
grep -Eq '^Seccomp:\s+2$' <<<"$st" || fail "/proc/1/status: Seccomp is not 2: $(grep Seccomp: <<<"$st")"
grep -Eq '^CapEff:\s+0+$' <<<"$st" || fail "/proc/1/status: CapEff is not 0: $(grep CapEff <<<"$st")"
grep -Eq '^NoNewPrivs:\s+1$' <<<"$st" || fail "/proc/1/status: NoNewPrivs is not 1"
[ -s "$E/kubelet/seccomp/ossensor/ossensor-seccomp.json" ] || fail "the init container did not install the seccomp profile"
pass "sensor process: Seccomp 2 (Localhost profile), CapEff 0, NoNewPrivs 1"

d=$(kc -n ossensor exec "$POD" -c ossensor -- ossensor diagnose 2>&1) || fail "ossensor diagnose failed:
$d"
pass "kubectl exec ... ossensor diagnose passes"

# -- traffic: between two ordinary pods, and from a pod to outside; hot-plug of their veths -----------------
pod_yaml() { # NAME PYTHON-CODE
    cat <<Y
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: $K8S_IMAGE
    imagePullPolicy: Never
    command: ["python3", "-c", $(printf '%s' "$2" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
Y
}
captured_ifaces() { logs "$POD" | grep -Eo " interface veth\S+ index=[0-9]+ .*: (capturing|no longer captured)"; }
n_before=$(logs "$POD" | grep -c " interface veth.*: capturing (" || true)
pod_yaml sink 'import time; time.sleep(3600)' | kc apply -f - >/dev/null
wait_until 60 "pod sink Running" bash -c "${KC[*]@Q} get pod sink -o jsonpath='{.status.phase}' | grep -qx Running" >/dev/null
SINK_IP=$(kc get pod sink -o jsonpath='{.status.podIP}')
t_hp=$SECONDS
wait_until 15 "the sensor adding the new pod's veth (hot-plug)" \
    bash -c "[ \$(${KC[*]@Q} -n ossensor logs $POD -c ossensor | grep -c ' interface veth.*: capturing (') -gt $n_before ]" >/dev/null
pass "hot-plug: the sink pod's veth captured $((SECONDS - t_hp)) s after the pod Running: $(captured_ifaces | tail -n 1)"
pod_yaml talker "import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for msg, dst in ((b'ossensor-e2e-pod-to-pod', '$SINK_IP'), (b'ossensor-e2e-pod-to-outside', '$VS_IP')):
        try:
            s.sendto(msg, (dst, 9999))
        except OSError as err:
            print(dst, err, file=sys.stderr, flush=True)
    time.sleep(0.5)" | kc apply -f - >/dev/null
wait_until 60 "pod talker Running" bash -c "${KC[*]@Q} get pod talker -o jsonpath='{.status.phase}' | grep -qx Running" >/dev/null
vs_check() { PYTHONPATH="$ROOT" python3 "$ROOT/scripts/k8s-e2e/vsensor_check.py" "$E/vs" $VS_IP $VS_PORT \
    ossensor-e2e-pod-to-pod ossensor-e2e-pod-to-outside; }
vs_both() { vs_check | python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(not all(v["packets"] for v in r["markers"].values()))'; }
t=$(wait_until 60 "the vSensor storing pod-to-pod and pod-to-outside packets" vs_both)
r=$(vs_check)
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(r["own"] != 0)' "$r" \
    || fail "the vSensor stored the sensor's own traffic: $r"
pass "vSensor stored pod-to-pod and pod-to-outside traffic (within $t s) and none of the sensor's own: $r"

# deletion drops the veth
n_gone=$(logs "$POD" | grep -c "no longer captured" || true)
kc delete pod sink --wait=false >/dev/null
t_hp=$SECONDS
wait_until 30 "the sensor dropping the deleted pod's veth" \
    bash -c "[ \$(${KC[*]@Q} -n ossensor logs $POD -c ossensor | grep -c 'no longer captured') -gt $n_gone ]" >/dev/null
pass "hot-plug: the deleted pod's veth dropped within $((SECONDS - t_hp)) s: $(logs "$POD" | grep 'no longer captured' | tail -n 1 | sed 's/.* L0 //')"

# -- a wrong key in the Secret: diagnose names the key --------------------------------------------------------
echo -n "$(openssl rand -hex 24)" > "$E/wrong-key"
kc -n ossensor create secret generic ossensor-hmac --from-file=hmac-key="$E/wrong-key" --from-file=ca.pem="$E/vs/ca.pem" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
t=$(wait_until 120 "the wrong key reaching the pod's Secret volume" \
    bash -c "[ \"\$(${KC[*]@Q} -n ossensor exec $POD -c ossensor -- cat /var/run/secrets/ossensor/hmac-key)\" = $(cat "$E/wrong-key") ]")
if d=$(kc -n ossensor exec "$POD" -c ossensor -- ossensor diagnose 2>&1); then fail "ossensor diagnose passed with a wrong key"; fi
grep -q "VSENSOR_HMAC_KEY" <<<"$d" || fail "ossensor diagnose with a wrong key does not name the key:
$d"
pass "wrong key in the Secret (reached the pod in $t s): diagnose fails naming it: $(grep -m1 "refuses" <<<"$d" || grep -m1 VSENSOR_HMAC_KEY <<<"$d")"
kc -n ossensor create secret generic ossensor-hmac --from-file=hmac-key="$E/key" --from-file=ca.pem="$E/vs/ca.pem" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
wait_until 120 "the right key back in the pod" \
    bash -c "[ \"\$(${KC[*]@Q} -n ossensor exec $POD -c ossensor -- cat /var/run/secrets/ossensor/hmac-key)\" = $KEY ]" >/dev/null

# -- kubectl set env rolls the pod; level-2 lines appear ------------------------------------------------------
t=$SECONDS
kc -n ossensor set env ds/ossensor OSSENSOR_DEBUG=2 >/dev/null
NEW=$(wait_ready_pod "$POD") || fail "set env: no new Ready pod within 120 s"
pass "set env OSSENSOR_DEBUG=2 rolled $POD -> $NEW in $((SECONDS - t)) s"
POD=$NEW
wait_until 60 "level-2 lines after the roll" logs_have "$POD" " L2 send seq=[0-9]+ packets=[0-9]+ .* -> 200 acked" >/dev/null
pass "kubectl logs: level-2 lines ($(logs "$POD" | grep -m1 ' L2 send' | sed 's/.* L2 //'))"

# -- kubectl delete: SIGTERM, the last batch flushed, within the grace period ---------------------------------
"${KC[@]}" -n ossensor logs -f "$POD" -c ossensor > "$E/logs/last-pod.log" 2>&1 &
follower=$!
PIDS+=("logs-follower:$follower")
sleep 1
grace=$(kc -n ossensor get pod "$POD" -o jsonpath='{.spec.terminationGracePeriodSeconds}')
t=$SECONDS
render_overlay | kc delete -f - --wait=false >/dev/null
wait_until 60 "the sensor pod gone" bash -c "! ${KC[*]@Q} -n ossensor get pod $POD" >/dev/null
took=$((SECONDS - t))
wait "$follower" 2>/dev/null || true
grep -q "stopping (SIGTERM received): flushing the last batch" "$E/logs/last-pod.log" \
  || fail "delete: no 'stopping (SIGTERM received)' line (SIGTERM not handled?)"
fin=$(grep " L0 final stats " "$E/logs/last-pod.log") || fail "delete: no final stats line"
cap=$(grep -Eo "captured=[0-9]+" <<<"$fin" | cut -d= -f2); ack=$(grep -Eo "acked=[0-9]+" <<<"$fin" | cut -d= -f2)
[ "$took" -le "$grace" ] || fail "delete: the pod took $took s, over its grace period ($grace s)"
{ [ -n "$cap" ] && [ "$cap" = "$ack" ]; } || fail "delete: the last batch was not all acknowledged: $fin"
pass "kubectl delete: stopped on the kubelet's SIGTERM ('stopping' line), last batch flushed (captured=$cap acked=$ack), pod gone in $took s (grace $grace s)"

k8s_log "all checks passed in $((SECONDS - T0)) s"
