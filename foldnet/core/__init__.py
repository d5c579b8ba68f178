"""Layer 0, shared by everything: errors, file I/O (local or gs://, atomic writes), logs, reports,
plots, run locks, the command-line exit policy and the transform vocabulary. Imports nothing else of
foldnet."""
