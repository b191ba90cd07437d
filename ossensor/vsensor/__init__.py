"""The reference vSensor: `ossensor vsensor` receives signed pcapng batches and stores them.

server.py (HTTPS routes, CLI), store.py (pcapng files + batches.jsonl), tls.py (self-made CA, contexts).
"""
