"""fraudlab: simulated card transactions and the fraud-detection protocol of
the ULB Machine Learning Group's Fraud Detection Handbook (our own code,
following its published generative process and evaluation protocol)."""
