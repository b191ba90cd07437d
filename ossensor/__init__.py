"""ossensor: an open packet-capture sensor agent.

Pipeline: config -> interfaces -> capture -> batch -> ship, with antigena,
vsensor (the reference receiver) and cli beside it.
"""

__version__ = "0.1.0"
