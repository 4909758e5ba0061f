"""Real-time fraud scoring: one registered model version per deployment."""
