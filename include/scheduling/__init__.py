"""Off-hours scheduling: windows, admission of queued training requests, cleanup rules, cost figures.

Plain rules over plain data; include/lifecycle/offhours.py runs them against the capacity seam
(the platform's capacity seam), the registry and the serving seams.
"""
