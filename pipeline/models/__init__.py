"""Training strategies, one module per strategy: DP logistic regression, federated XGBoost."""
