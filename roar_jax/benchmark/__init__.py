"""The benchmarks: `roar` (explain stage, ROAR/KAR grid, no-retrain scores,
results, report, the synthetic linear experiment) and `sanity` (model and data
randomization, similarity metrics, their report)."""
