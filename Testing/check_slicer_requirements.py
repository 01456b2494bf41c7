#!/usr/bin/env python3
"""Would installing the MRHNet module's requirements change a package that Slicer already has?

Asks the package registry (pip's resolver, ``pip install --dry-run --report``, nothing installed) what
``pip install -r MRHNet/Resources/requirements.txt -c constraints.txt`` would install into a given
Slicer's Python, with that Slicer's packages pinned in the constraints file as
``MRHNetLib.gui.install.write_constraints`` pins them inside Slicer. Passes when every pinned package
resolves to its pinned version (nothing upgraded or downgraded) and torch is not pulled in.

    python3 Testing/check_slicer_requirements.py                 # Slicer 5.10 (Python 3.12, numpy 2.0.2, scipy 1.13.1)
    python3 Testing/check_slicer_requirements.py --slicer 5.8    # Python 3.9, numpy 1.26.4
    python3 Testing/check_slicer_requirements.py --unconstrained -r old-requirements.txt   # show a defect

Needs the package registry (network). Exit code 0: nothing of Slicer's changes; 1: something would; 2:
the registry could not be asked.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "MRHNet" / "Resources" / "requirements.txt"
# what each Slicer release ships (design card: slicer-child-process.md); pins as the module writes them
SLICER = {
    "5.10": {"python": "3.12", "pins": {"numpy": "2.0.2", "scipy": "1.13.1", "pip": "25.1.1"}},
    "5.8": {"python": "3.9", "pins": {"numpy": "1.26.4"}},
}
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")


def _normalize(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def dry_run(requirements: Path, python: str, pins: dict[str, str] | None) -> list[tuple[str, str]]:
    """(name, version) of everything pip would install for ``requirements`` into a fresh target of that
    Python version with ``pins`` as constraints (None: no constraints file). Raises RuntimeError with
    pip's message when pip fails (no registry, or no solution)."""
    with tempfile.TemporaryDirectory(prefix="mrhnet-dry-run-") as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
               "--report", str(tmp / "report.json"), "--target", str(tmp / "target"),
               "--python-version", python, "--implementation", "cp", "--only-binary=:all:",
               *[f"--platform={p}" for p in PLATFORMS], "-r", str(requirements)]
        if pins is not None:
            (tmp / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
            cmd += ["-c", str(tmp / "constraints.txt")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING: Location")]
            raise RuntimeError("pip failed: " + "\n".join(lines[-15:]))
        report = json.loads((tmp / "report.json").read_text())
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]]


def check(slicer: str = "5.10", requirements: Path = REQUIREMENTS) -> tuple[list[str], list[tuple[str, str]]]:
    """(problems, what would be installed) for one Slicer release."""
    profile = SLICER[slicer]
    plan = dry_run(requirements, profile["python"], profile["pins"])
    resolved = {_normalize(n): v for n, v in plan}
    problems = [f"{name} {resolved[_normalize(name)]} would replace Slicer's {pinned}"
                for name, pinned in profile["pins"].items()
                if _normalize(name) in resolved and resolved[_normalize(name)] != pinned]
    if "torch" in resolved:
        problems.append(f"torch {resolved['torch']} would be pip-installed (it must come from the PyTorch extension)")
    return problems, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer", choices=sorted(SLICER), default="5.10")
    parser.add_argument("-r", "--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--unconstrained", action="store_true",
                        help="no constraints file: show what pip alone would do to Slicer's packages")
    args = parser.parse_args(argv)
    profile = SLICER[args.slicer]
    try:
        if args.unconstrained:
            plan = dry_run(args.requirements, profile["python"], None)
            resolved = {_normalize(n): v for n, v in plan}
            # (--target: nothing counts as installed, so this is what pip picks when left free)
            problems = [f"pip left free picks {n} {resolved[_normalize(n)]}, Slicer has {v}"
                        for n, v in profile["pins"].items() if _normalize(n) in resolved and resolved[_normalize(n)] != v]
        else:
            problems, plan = check(args.slicer, args.requirements)
    except RuntimeError as exc:
        print(f"could not ask the package registry: {exc}", file=sys.stderr)
        return 2
    pinned = {_normalize(n) for n in profile["pins"]}
    new = [f"{n} {v}" for n, v in plan if _normalize(n) not in pinned]
    print(f"Slicer {args.slicer} (Python {profile['python']}, "
          + ", ".join(f"{n} {v}" for n, v in profile["pins"].items()) + ")")
    print(f"would install {len(new)} new packages: " + ", ".join(new))
    for problem in problems:
        print("PROBLEM: " + problem)
    if not problems:
        print("nothing Slicer has would change")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
