"""`rlvr-plan`: every stage of a config compiled ahead of time for a TPU topology from a CPU host. chips.py
(peaks, topologies, libtpu), compile.py (one stage's costs), stages*.py (what compiles), planner.py (plan()),
report.py (the table), cli.py (the command)."""
