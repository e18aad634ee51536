"""Measurement tools off the daemon's floor: the benchmark, the simulator, the chaos, slowloris,
script-cost and host-probe programs, and throw-away Redis processes and topologies."""
