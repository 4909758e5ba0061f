"""The registry gateway (MLflow behind the hub) and the promotion controller."""
