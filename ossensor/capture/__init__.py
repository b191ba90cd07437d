"""Capture: the kernel ring (native/ring.c) and the BPF program that feeds it."""
