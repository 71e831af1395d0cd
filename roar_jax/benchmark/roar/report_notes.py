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
