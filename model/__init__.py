"""Self Forcing (Wan2.1-T2V-1.3B, causal) model code, installed as ``sfbridge.model``.

This package never imports the bridge (``sfbridge.*`` outside ``sfbridge.model``): the daemon
talks to it only through a generator adapter in ``sfbridge/generators``.
"""
