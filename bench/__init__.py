"""liminati's benchmark: `bash bench/run.sh` (see bench/run.py and bench/RESULTS.md)."""
