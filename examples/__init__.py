"""The example experiments, shipped in the wheel as the package dltune.examples (setup.py): `dltune example NAME`
copies one out."""
