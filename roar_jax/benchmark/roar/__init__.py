"""ROAR/KAR: the explain stage, the retraining grid, no-retrain scores,
results and the report."""
