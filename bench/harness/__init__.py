"""The gateway benchmark harness: backends, targets, scenarios, report. Entry point: bench/run."""
