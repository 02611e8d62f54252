"""Models opmeter carries itself (reference implementations with random weights) and their workloads."""
