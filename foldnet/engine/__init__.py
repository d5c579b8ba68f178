"""Layer 4, training and prediction for any task through the seam: config, runner, train loop, predict,
strategy, workers, preflight."""
