"""Ensembles of trained models (§8.2): the best trials of a search, or the seeds of an ablation variant, combined by
mean, vote, fitted weights, ensemble selection or a weight-averaged soup, and measured against the best single one."""

from dltune.ensembles.model import Ensemble, load_ensemble, probabilities
from dltune.ensembles.run import METHODS, EnsembleResult, ensemble

__all__ = ["METHODS", "Ensemble", "EnsembleResult", "ensemble", "load_ensemble", "probabilities"]
