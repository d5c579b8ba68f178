"""Layer 4, fold x TTA x member averaging into a submission: averaging, weight fit, scores, the
ensemble command line."""
