"""The synthetic UK Biobank-like cohort: phenotypes, anatomy, DICOM bulk zips and ground truth.

Use :func:`synthesize` (or ``cohortscale synth``) to write a cohort; :func:`simulate_population` and
:func:`to_ukbconv` give the phenotype side alone, fast enough for 100,000 participants.
"""

from cohortscale.config import AnomalyRates, SynthConfig
from cohortscale.synth.cohort import CohortSummary, synthesize
from cohortscale.synth.population import GenerativeModel, simulate_population, to_ukbconv, truth_idps

__all__ = [
    "AnomalyRates",
    "CohortSummary",
    "GenerativeModel",
    "SynthConfig",
    "simulate_population",
    "synthesize",
    "to_ukbconv",
    "truth_idps",
]
