"""Evaluation: each test set's metrics, batch by batch, on torchmetrics."""
