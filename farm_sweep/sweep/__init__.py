"""The sweep: study and search-space files, the Optuna-Tune bridge (sampling and pruning), one trial,
MLflow tracking, the results table (trials.csv) and the typed tables, the runner and the results command."""
