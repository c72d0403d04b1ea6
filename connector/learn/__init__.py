"""Learning from outcomes: the dataset of past leads, backtests, suggested points, previews, reports."""
