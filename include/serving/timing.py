"""The local profile's short intervals, in one place: scrape, evaluation and readiness polling.

Prometheus scrapes every second locally so an analysis interval of a few seconds has data; on eks
the PodMonitor's interval (k8s objects rendered in `k8s_objects.py`) is the cluster's business.
"""

SCRAPE_INTERVAL_S = 1
EVALUATION_INTERVAL_S = 1
READY_POLL_S = 0.5
PROCESS_START_TIMEOUT_S = 60.0
