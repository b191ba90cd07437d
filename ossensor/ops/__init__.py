"""The control plane beside the data path: log.py (debug levels), metrics.py (Prometheus, probes),
diagnose.py (`ossensor diagnose`), privileges.py (capabilities given up after start),
stop_signals.py (SIGTERM/SIGINT without a lock). Nothing is imported here."""
