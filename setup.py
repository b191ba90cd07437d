# The C extension holds only the hot path: the TPACKET_V3 ring reader that writes
# pcapng Enhanced Packet Blocks straight into the batch buffer.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ossensor._native",
            sources=["native/ring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
        )
    ]
)
