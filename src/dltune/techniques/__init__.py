"""The tuning techniques an experiment file names: optimizers, learning-rate schedules, losses, batch policies,
regularization and augmentation, each a registry of short names."""
