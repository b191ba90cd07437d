# The C extension holds only the hot path: the TPACKET_V3 ring reader that writes
# pcapng Enhanced Packet Blocks straight into the batch buffer.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ossensor._native",
            sources=["native/ring.c", "native/ring_rx.c", "native/dedup.c"],  # the Python type and batch; the kernel steps; duplicates
            depends=["native/ring_rx.h", "native/dedup.h", "native/antigena.h", "native/epb.h", "native/l3.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
        ),
        # `ossensor replay`: pcap/pcapng files -> EPBs in batch buffers, BPF by libpcap's bpf_filter()
        Extension(
            "ossensor._filereader",
            # the Python type; the file formats; one interface's filter as `tcpdump -r` compiles it
            sources=["native/filereader.c", "native/capfile.c", "native/capfilter.c"],
            depends=["native/capfile.h", "native/capfilter.h", "native/epb.h"],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
        ),
        # the reference vSensor: one pass over a received pcapng section (checks, block index, split)
        Extension(
            "ossensor._pcapngscan",
            sources=["native/pcapng_scan.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
        ),
    ]
)
