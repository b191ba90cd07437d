"""Capturer programs the bench runs as separate processes (python3 bench/_capturers.py KIND DEV).

Each runs until SIGTERM, then prints one line `RESULT captured=N dropped=M` and exits.
  ossensor-null : ossensor's live capture (native ring → pcapng batches) into a null sink
  ossensor-dedup: the same with duplicate suppression on (native/dedup.c, 20 ms window), on DEV and lo
                  (with one interface the ring skips the table: no copy to meet); every packet hashed and
                  looked up, none a duplicate (the worst case: every one inserted)
  none          : no capture at all (the generator's speed alone: what capture slows it by is the
                  kernel's share of capturing, bench/capture.py --only none,...)
  pcapy         : pcapy-ng next_batch loop (libpcap, batches, Python per batch)
  scapy         : scapy sniff(store=False) (Python per packet)
"""

import os
import select
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RING_MB = int(os.environ.get("BENCH_RING_MB", "64"))

if os.environ.get("BENCH_NATIVE_SO"):  # another build of the extension (bench/capture.py --ab NAME=PATH)
    import importlib.util

    _spec = importlib.util.spec_from_file_location("ossensor._native", os.environ["BENCH_NATIVE_SO"])
    sys.modules["ossensor._native"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["ossensor._native"])


def ossensor_null(dev: str, dedup_window_ms: int = 0, with_lo: bool = False) -> None:
    from ossensor.ops import log as L
    from ossensor.ship.accounting import Accounting
    from ossensor.capture.live import LiveCapture
    from ossensor.interfaces.netlink import enumerate_interfaces

    acct = Accounting()
    cap = LiveCapture(ring_bytes=RING_MB << 20, block_timeout_ms=10, snaplen=262144, batch_bytes=4 << 20,
                      batch_age_s=1.0, filter_expr="", log=L.Log(0), accounting=acct,
                      dedup_window_ms=dedup_window_ms)
    # dedup on: lo as well (idle here), so the table is used (the ring skips it for a single interface)
    with_lo = with_lo or bool(dedup_window_ms)
    cap.set_interfaces([i for i in enumerate_interfaces() if i.name == dev or (with_lo and i.name == "lo")])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cap.start()
    print("READY", flush=True)
    cap.run(stop, lambda batch: None)
    seen, drops = cap.kernel_stats()
    drain_ns = getattr(cap.ring, "drain_ns", -1)  # -1: a build without it (--ab)
    print(f"RESULT captured={acct.captured} dropped={drops} drain_ns={drain_ns}", flush=True)


def no_capture(dev: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    print("RESULT captured=0 dropped=0", flush=True)


def pcapy_loop(dev: str) -> None:
    import pcapy

    p = pcapy.create(dev)
    p.set_snaplen(262144)
    p.set_promisc(1)
    p.set_timeout(100)
    p.set_buffer_size(RING_MB << 20)
    p.activate()
    p.setnonblock(1)  # next_batch would otherwise wait for packets past SIGTERM
    fd = p.getfd()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("READY", flush=True)
    n = 0
    while not stop.is_set():
        select.select([fd], [], [], 0.1)
        _, meta = p.next_batch(4096)
        n += len(meta) // 16
    recv, drop, _ = p.stats()
    print(f"RESULT captured={n} dropped={drop}", flush=True)


def scapy_sniff(dev: str) -> None:
    import select

    from scapy.all import conf

    conf.bufsize = RING_MB << 20
    sock = conf.L2listen(iface=dev)  # what sniff() uses; one socket for the whole run
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("READY", flush=True)
    n = 0
    while not stop.is_set():
        if select.select([sock], [], [], 0.1)[0]:
            if sock.recv() is not None:  # dissects the packet, as sniff(prn=...) does
                n += 1
    print(f"RESULT captured={n} dropped=-1", flush=True)


if __name__ == "__main__":
    kind, dev = sys.argv[1], sys.argv[2]
    {"ossensor-null": ossensor_null, "ossensor-dedup": lambda d: ossensor_null(d, 20),
     "ossensor-null2": lambda d: ossensor_null(d, 0, with_lo=True), "none": no_capture, "pcapy": pcapy_loop,
     "scapy": scapy_sniff}[kind](dev)
