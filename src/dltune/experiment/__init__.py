"""The experiment file: its sections and their checks (sections, config), the errors that name a key
(config_errors), its text as `dltune config` prints it (config_text), and the example experiments that ship with
dltune (examples). The lowest room but the base modules: it imports nothing of dltune beyond errors and files."""
