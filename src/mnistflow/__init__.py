"""mnistflow: a reproducible DVC + MLflow pipeline for the MNIST family of classifiers."""
