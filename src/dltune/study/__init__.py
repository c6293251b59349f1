"""Studies over many runs, stored in Optuna: the search space, samplers, pruners and storages (engines), stored
searches (studies), how workers share one (sharing), ASHA's rungs, ablations and searches."""
