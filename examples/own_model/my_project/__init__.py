"""A user's own project, as dltune sees it: a model factory, a data loader, a loss and a metric, named by import path
in own_model.toml ("my_project.models:build", ...)."""
