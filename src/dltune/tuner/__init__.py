"""What is found before a run: the finders (lr range test, batch and loader finders), the rules that read an lr
range test's curve (lr_rules), and `train` (auto), which finds the settings that train.auto names and then runs
the loop: the public `dltune.train`."""
