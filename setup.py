"""Packaging hook (everything else is declared in pyproject.toml).

The data the tool reads at run time lives in the repository's top-level ``Resources/`` (beside the Slicer
module, as the extension's CMake installs it). The wheel ships it inside the package, as
``MRHNetLib/Resources``; ``MRHNetLib.resources.resources_dir()`` looks there and beside the package, so a
source checkout, an installed wheel and the Slicer extension's install tree find the same files.
Figures (README images) and the scripts that made the shipped networks are not needed at run time.
"""
from setuptools import find_packages, setup

# Resources/ sub-folders the engine reads (Testing/tests/test_wheel.py checks this list against the
# engine's resource() calls and against what the built wheel holds)
RUNTIME_RESOURCES = [
    "anatomy/*.nii.gz", "anatomy/README.md",
    "networks/*/*.mrhnet/*", "networks/*/README.md",
    "protocols/*.json", "protocols/original_method_files/*",
]

setup(
    packages=find_packages(include=["MRHNetLib", "MRHNetLib.*"]) + ["MRHNetLib.Resources"],
    package_dir={"MRHNetLib.Resources": "Resources"},
    package_data={"MRHNetLib.Resources": RUNTIME_RESOURCES},
    include_package_data=False,
)
