"""Learning from the org's own outcomes: the dataset, backtests and the learned conversion probability."""
