"""Off-hours scheduling: windows, admission of queued training requests, cleanup, cost figures."""
