"""Partitioned keyspaces: a plan (plan.py), one member process per partition (supervisor.py),
kube-apiserver's flags for a plan and a status table (cli.py)."""
