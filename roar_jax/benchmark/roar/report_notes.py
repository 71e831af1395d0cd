"""The prose of the ROAR/KAR report: what each table and figure means.

Kept apart from `report.py`, which assembles the files, so that the words a
reader sees can be read and reviewed in one place.
"""

RESULTS_NOTE = (
    "Accuracies in %: the mean over seeds of the retrained models with its "
    "95% confidence interval (Student t over seeds); 'no retrain' is the base "
    "model on the same degraded test split. 'vs random, points': the mean "
    "difference to random at the same mode, fraction and fill, with a 95% "
    "interval from a bootstrap over seeds and test images (each retrain "
    "keeps which test images it gets right; 2,000 resamples). 'p': a paired "
    "t-test over seeds (seed k of every unit shares its initialization and "
    "data order). Multiple testing: the family is every (estimator, "
    "fraction) cell tested against the same control under one mode and "
    "fill; 'Holm p' controls the chance of any false verdict in it and "
    "gives the verdict words, 'BH q' the share of false discoveries. 'Not "
    "distinguishable' names the smallest difference the seeds could have "
    "detected (80% power, two-sided 5%). In ROAR a better estimator leaves "
    "a lower accuracy, in KAR a higher one.")

SMOOTH_NOTE = (
    "Each estimator is also judged against its smoothness-matched control "
    "(random_smooth.<estimator>: iid noise blurred to the estimator's "
    "spatial autocorrelation, or random_smooth at the configured sigma). "
    "ROAD's noisy linear fill restores scattered pixels better than "
    "clustered ones, so any spatially smooth ranking beats iid random there "
    "without knowing the model (the blur bias, Song, Cha and Seo 2023). "
    "'only vs iid random' marks a win that the matched control does not "
    "confirm.")

STABILITY_NOTE = (
    "Each seed orders the estimators by their accuracy averaged over the "
    "fractions; Kendall's W (0: no agreement, 1: every seed gives the same "
    "order) and the mean Spearman correlation between pairs of seeds say how "
    "stable that ordering is. With one seed there is nothing to compare.")

RANK_NOTE = (
    "An estimator is informative only where it beats random; estimators whose "
    "intervals overlap are not ordered by these data.")

RANK_HEADINGS = {
    "roar": ("ROAR (best first: lowest accuracy after removing its most "
             "important pixels)"),
    "kar": ("KAR (best first: highest accuracy keeping only its most "
            "important pixels)")}

FILLS_NOTE = (
    "The same grid under each fill of the removed pixels. A constant fill "
    "(channel_mean) leaves the mask's shape visible, which can carry class "
    "information into the retrained model; ROAD's noisy linear imputation "
    "(noisy_linear) hides it (Rong et al. 2022). 'verdict differs': the "
    "estimator's verdict against random changes with the fill.")

LEAK_NOTE = (
    "A model retrained on these images can score by reading the mask's "
    "shape instead of the pixels left (ROAD's leakage, Rong et al. 2022), so "
    "their ROAR/KAR accuracy says less about the estimator. Compare the "
    "noisy_linear fill, which hides the shape, and the smoothness-matched "
    "control; the 'mask alone' column gives each probe's accuracy with its "
    "95% interval over probe seeds (leakage.csv).")

LEAKAGE_TABLE_NOTE = (
    "For each (estimator, mode, fraction) a classifier of the base "
    "architecture is trained on the removal mask alone (removed positions "
    "white, kept ones black) and scored on the test split's masks: its "
    "accuracy is the class information the mask's shape carries. Mean over "
    "the probe seeds with a 95% Student-t interval; 'leaks': above chance "
    "beyond that interval (leakage.csv).")

METRICS_NOTE = (
    "The base model scored on the degraded test images, nothing retrained: "
    "the area under each curve, averaged over the images, with a 95% "
    "Student-t interval over the images (metrics.csv). Deletion and ROAD "
    "MoRF remove the most important positions first (lower is better); "
    "insertion restores them and ROAD LeRF removes the least important "
    "first (higher is better).")

AGREEMENT_NOTE = (
    "Spearman's rho between two metrics' orderings of the estimators (1: "
    "the same order, -1: reversed; '–': fewer than 3 shared estimators or a "
    "metric that ties them all), scores oriented so that higher is better "
    "(agreement.csv).")

FEW_ESTIMATORS_NOTE = (
    "Caveat: {few} of the {pairs} correlations are over fewer than {least} "
    "estimators. Over 3 estimators rho takes only 4 values (1, 0.5, -0.5, "
    "-1) and a single swapped pair moves it from 1 to 0.5, so such a value "
    "says little about agreement; add estimators to read it.")

METRICS_LEAK_WARNING = (
    "Warning: the removal mask alone predicts the class above chance beyond "
    "its 95% interval for {names}. ")

GRID_REPORT_NOTE = (
    "This page shows what the metrics stage and the sanity checks wrote; "
    "the ROAR/KAR verdicts appear here once the grid's report is built "
    "(--mode=roar, or --mode=report).")

# What each file of W/report/ holds, for the pages' file lists: exact names,
# then prefixes (a sanity figure, ...).
FILE_NOTES = {
    "results.csv": "one row per (estimator, mode, fraction, fill): mean "
                   "accuracy, 95% CI, the test against random",
    "comparisons.csv": "every estimator against each of its controls: p, "
                       "Holm p, BH q, bootstrap interval, detectable "
                       "difference",
    "results_by_seed.csv": "one row per retrain, from which every test "
                           "reruns",
    "rank_stability.csv": "how consistently the seeds order the estimators",
    "leakage.csv": "the mask-only probes: accuracy of a model that sees "
                   "only the removal mask",
    "metrics.csv": "the no-retrain metrics' areas under the curves",
    "agreement.csv": "Spearman's rho between the metrics' rankings",
    "sanity.csv": "the sanity checks' similarities, per step and metric",
    "sanity.md": "the sanity checks' settings and verdicts",
    "summary.md": "this report as markdown",
    "index.html": "this report on one self-contained page",
    "roar.png": "the ROAR curves", "roar.pdf": "the ROAR curves (vector)",
    "kar.png": "the KAR curves", "kar.pdf": "the KAR curves (vector)",
    "metrics.png": "the no-retrain metrics' curves",
    "metrics.pdf": "the no-retrain metrics' curves (vector)",
    "saliency.png": "example saliency maps",
    "saliency.pdf": "example saliency maps (vector)",
}
FILE_PREFIX_NOTES = {"sanity_": "a sanity-check figure"}
