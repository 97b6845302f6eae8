"""The client side of a run (torch-free): run folders and their state (rundir), the event log
(events), the control socket (control), creating and starting runs (launch), and a run's
history and statistics read from its log (metrics).
"""
