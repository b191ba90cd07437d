"""Ship stage: captured packets to the vSensor, nothing lost silently.

batch.py (pcapng sections and the bounded queue of them) → pipeline.py (the shipper thread: queue,
retries, spool.py on disk) → client.py (the signed HTTPS POST, urllib3), through proxy.py when a proxy
is set; accounting.py counts where every packet went. Nothing is imported here.
"""
