"""`python -m dilconv bench` (dilconv/bench/cli.py): the op suite (suite.py, ops.py, run.py), the
network suite (networks.py), timing (timing.py), machine peaks (machine.py), the report
(report.py) and the static GPU model (gpu_model.py)."""
