"""The training and evaluation step, device and precision, distributed processes, checkpoints, weight averages and batch mixing."""
