"""copl_dist: unsupervised temporal action localization (COPL, ACM MM 2024) at scale."""

__version__ = "0.1.0"
