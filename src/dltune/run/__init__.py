"""One run: the loop (loop.fit), what it is assembled from (assembly, evaluation, metrics), what is checked before
it starts (checks), the process it runs in (runtime, environment, rank), and what it leaves in its run folder
(checkpoints, results, saved). The public entry is `dltune.train` (tuner.auto), which finds the settings of
train.auto and then calls loop.fit."""
