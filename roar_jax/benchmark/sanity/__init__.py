"""The sanity checks of Adebayo et al.: model and data randomization, the
similarity of maps, and their report."""
