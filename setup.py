"""What pyproject.toml cannot say statically: the packages. dltune's are under src/; the repository's examples/ folder
ships as the package dltune.examples, from where it lies (not copied into src/), with each example folder in it."""

from setuptools import find_namespace_packages, setup

examples = ["dltune.examples", *(f"dltune.examples.{name}" for name in
                                 find_namespace_packages("examples", exclude=["*__pycache__*"]))]
setup(packages=[*find_namespace_packages("src", include=["dltune", "dltune.*"], exclude=["*__pycache__*"]), *examples],
      package_dir={"": "src", "dltune.examples": "examples"})
