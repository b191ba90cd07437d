#!/usr/bin/env bash
# The main job end to end on this machine, against the built-in reference vSensor:
#   installs what is missing, makes two network namespaces joined by a veth pair,
#   starts the reference vSensor (TLS, self-signed CA) and the sensor in one of them,
#   sends UDP and TCP traffic from the other, stops the sensor with SIGTERM,
#   and shows what reached the vSensor (read back with tcpdump).
# Run as root: sudo ./scripts/demo.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, packet capture): sudo $0" >&2; exit 2; }
SECS=${1:-4}
scripts/setup.sh

PY=${PYTHON:-python3}
CAP=ossdemo-cap PEER=ossdemo-peer OUT=${OUT:-/tmp/ossensor-demo}
KEY=$(head -c 24 /dev/urandom | base64)
cleanup() {
  for ns in $CAP $PEER; do
    ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== topology: $CAP (10.99.0.1, veth demo0) <-> $PEER (10.99.0.2, veth demo1)"
ip netns add $CAP; ip netns add $PEER
ip -n $CAP link add demo0 type veth peer name demo1 netns $PEER
ip -n $CAP addr add 10.99.0.1/24 dev demo0; ip -n $PEER addr add 10.99.0.2/24 dev demo1
for ns in $CAP $PEER; do ip -n $ns link set lo up; done
ip -n $CAP link set demo0 up; ip -n $PEER link set demo1 up

echo "== reference vSensor on 127.0.0.1:8443 (in $CAP), writing to $OUT/vsensor"
VSENSOR_HMAC_KEY=$KEY ip netns exec $CAP $PY -m ossensor vsensor --listen 127.0.0.1:8443 \
  --out "$OUT/vsensor" >"$OUT/vsensor.log" 2>&1 &
for _ in $(seq 50); do grep -q "listening on" "$OUT/vsensor.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$OUT/vsensor.log" || { cat "$OUT/vsensor.log"; exit 1; }

echo "== sensor (OSSENSOR_DEBUG=2) capturing in $CAP for ${SECS}s"
env VSENSOR_HOSTNAME=127.0.0.1 VSENSOR_PORT=8443 VSENSOR_HMAC_KEY="$KEY" \
  OSSENSOR_TLS_CA_FILE="$OUT/vsensor/ca.pem" OSSENSOR_CONFIG_PATH="$OUT/ossensor.cfg" \
  OSSENSOR_DEBUG=2 OSSENSOR_STATS_INTERVAL=2 OSSENSOR_BATCH_MAX_AGE_MS=500 \
  ip netns exec $CAP $PY -m ossensor run >"$OUT/sensor.log" 2>&1 &
SENSOR=$!
for _ in $(seq 100); do grep -q "capturing on" "$OUT/sensor.log" 2>/dev/null && break; sleep 0.1; done

# traffic: a TCP echo exchange and 1000 UDP datagrams from the peer namespace
ip netns exec $CAP $PY -c '
import socket
s = socket.create_server(("10.99.0.1", 7000)); s.settimeout(10)
c, _ = s.accept()
while (d := c.recv(65536)): c.sendall(d)
' &
sleep 0.3
ip netns exec $PEER $PY -c '
import socket, time
c = socket.create_connection(("10.99.0.1", 7000))
for i in range(20):
    c.sendall(b"hello vSensor %d\n" % i); c.recv(100); time.sleep(0.01)
c.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(1000):
    u.sendto(b"udp datagram %d" % i, ("10.99.0.1", 9999))
'
sleep "$SECS"
kill -TERM $SENSOR; wait $SENSOR || true

echo; echo "== sensor log (level 0-2)"; cat "$OUT/sensor.log"
echo; echo "== vSensor log (last lines)"; tail -n 5 "$OUT/vsensor.log"
echo; echo "== what arrived at the vSensor (tcpdump -r, first lines)"
set +o pipefail  # head closes the pipe early: that is not a failure
f=$(ls "$OUT"/vsensor/*.pcapng | head -n1)
tcpdump -n -r "$f" 2>/dev/null | head -n 8
echo "..."
count() { tcpdump -n -r "$f" "$@" 2>/dev/null | wc -l; }
echo "packets stored: $(count) (UDP to 9999: $(count udp port 9999), TCP port 7000: $(count tcp port 7000))"
echo "sensor: $(grep -o 'final stats captured=[0-9]* .*acked=[0-9]*' "$OUT/sensor.log" | sed 's/ [a-z_]*drops=0//g; s/ refused=0//')"
echo "files in $OUT: sensor.log vsensor.log ossensor.cfg vsensor/"
