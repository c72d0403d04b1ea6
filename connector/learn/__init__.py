"""Learning from outcomes: the dataset of past leads (dataset.py) that backtests, suggestions and
the predictive model build on."""
