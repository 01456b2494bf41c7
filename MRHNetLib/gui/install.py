"""The Python packages the MRHNet module needs inside 3D Slicer, checked and installed without harming
Slicer's own packages.

Slicer runs (and has imported) its own numpy, scipy, SimpleITK, ...; a pip install that upgrades one of
them leaves Slicer broken until a restart (Slicer 5.10: scikit-image pulled tifffile, which needs
numpy >= 2.1, over Slicer's numpy 2.0.2). So:

* the module installs only what its child process needs for inference and training
  (``MRHNet/Resources/requirements.txt``); evaluation-only packages (scikit-image, scikit-learn,
  matplotlib) and CLI-only ones (tqdm, mat-io, brkraw) are imported lazily by the engine, where used;
* every pip call gets a constraints file (:func:`write_constraints`) that pins every distribution
  already installed to its installed version, so pip picks versions that fit them or fails, and never
  upgrades or downgrades one;
* torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build for the machine's GPU;
  it is never pip-installed here. When the extension is missing, installing it is offered.

Everything but :func:`install_requirements` is framework-free (tests and scripts use it outside Slicer);
``slicer`` and ``qt`` are imported inside that function only. Python 3.9 compatible (Slicer 5.8).

For the module::

    from MRHNetLib.gui import install
    if install.missing_requirements(install.read_requirements(self.resourcePath("requirements.txt"))):
        install.install_requirements(self.resourcePath("requirements.txt"))   # one prompt, may raise
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

try:  # Slicer and every pip-enabled Python have packaging (pip vendors it)
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

from ..errors import MRHNetError

TORCH_REQUIREMENT = "torch>=2.1"
# shipped with Slicer (its own builds): required, always pinned, never installed by the module
SLICER_PROVIDED = ("numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.3")
# left unpinned while the PyTorch extension installs torch: torch itself, and pip and light-the-torch, which
# PyTorchUtils installs first (light-the-torch pins the pip it works with)
TORCH_INSTALL_FREE = ("torch", "torchvision", "torchaudio", "pip", "light-the-torch")
# the ctest registration of the self-test sets this (MRHNet/CMakeLists.txt): see selftest_skip_reason
SELFTEST_ENV = "MRHNET_SELFTEST_ENGINE"
_IMPORT_NAMES = {"pynrrd": "nrrd", "simpleitk": "SimpleITK", "scikit-image": "skimage",
                 "scikit-learn": "sklearn", "mat-io": "matio"}


class InstallError(MRHNetError, RuntimeError):
    """Installing the requirements failed or was refused; the message says what to do (an MRHNetError:
    the GUIs show it as one line)."""


class RestartRequired(InstallError):
    """The PyTorch extension was just installed: Slicer must restart before torch can be installed
    (a restart was offered); the work cannot go on in this session."""


@dataclass
class InstallResult:
    """What :func:`install_requirements` did."""

    installed: List[str] = field(default_factory=list)  # requirement strings that were missing
    restart_required: bool = False  # an imported torch was replaced (child processes get the new one)


def normalize(name: str) -> str:
    """PEP 503 name: ``SimpleITK`` -> ``simpleitk``, ``mat_io`` -> ``mat-io``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_file() -> Path:
    """The module's requirements.txt: ``MRHNet/Resources`` in the source tree; in the Slicer install tree
    the module's resources and the engine's data share ``<qt-scripted-modules>/Resources``."""
    here = Path(__file__).resolve().parent.parent.parent  # the folder holding MRHNetLib
    for candidate in (here / "MRHNet" / "Resources" / "requirements.txt", here / "Resources" / "requirements.txt"):
        if candidate.is_file():
            return candidate
    raise InstallError(f"the MRHNet module's requirements.txt was not found beside {here}")


def read_requirements(path: Optional[os.PathLike] = None) -> List[str]:
    """The requirement lines of a requirements file (comments, blank lines and pip options dropped)."""
    lines = Path(path if path is not None else requirements_file()).read_text().splitlines()
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            Requirement(line)  # raises on a malformed line
            out.append(line)
    return out


def installed_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None. Packages that Slicer builds itself may lack pip
    metadata: their module's ``__version__`` is used then (importing it: only for those that Slicer
    has imported anyway)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    module_name = _IMPORT_NAMES.get(normalize(name), name)
    if normalize(name) in {normalize(Requirement(r).name) for r in SLICER_PROVIDED}:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None
        version = getattr(module, "__version__", None)
        if version is None and hasattr(module, "Version"):  # SimpleITK
            version = module.Version.VersionString()
        return str(version) if version else None
    return None


def _satisfied(requirement: str) -> bool:
    req = Requirement(requirement)
    version = installed_version(req.name)
    if version is None:
        return False
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def missing_requirements(requirements: Optional[Iterable[str]] = None, torch: bool = True,
                         slicer_provided: bool = True) -> List[str]:
    """Requirement strings not installed, or installed at a version that does not satisfy them: the
    module's requirements (default: its requirements.txt), ``torch>=2.1`` (``torch=False`` leaves it
    out) and numpy / scipy / SimpleITK, which Slicer provides. Reads metadata only: fast, imports nothing
    heavy (safe on build machines without torch)."""
    reqs = list(read_requirements() if requirements is None else requirements)
    if slicer_provided:
        reqs = list(SLICER_PROVIDED) + reqs
    if torch:
        reqs.append(TORCH_REQUIREMENT)
    return [r for r in reqs if not _satisfied(r)]


def installed_distributions() -> dict:
    """``{normalized name: (name, version)}`` of every installed distribution that pip can see, the
    first one on ``sys.path`` winning (that is the one imported)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        found.setdefault(normalize(name), (name, dist.version))
    return found


def constraints(requirements: Optional[Iterable[str]] = None, free: Iterable[str] = ()) -> List[str]:
    """pip constraint lines ``name==version`` pinning every installed distribution to its installed
    version (numpy, scipy, SimpleITK, ... and everything else), so that installing ``requirements``
    changes nothing already there. A requirement whose installed version does not satisfy it is left
    unpinned (it has to be upgraded; a restart is needed if it was imported), except the packages
    Slicer provides, which stay pinned: pip then refuses instead of replacing Slicer's own. ``free``:
    names never pinned (torchvision when the PyTorch extension installs torch)."""
    reqs = [Requirement(r) for r in (read_requirements() if requirements is None else requirements)]
    unsatisfied = {normalize(r.name) for r in reqs if not _satisfied(str(r))} | {normalize(n) for n in free}
    always = {normalize(Requirement(r).name) for r in SLICER_PROVIDED}
    pins = {}
    for key, (name, version) in installed_distributions().items():
        if key in unsatisfied and key not in always:
            continue
        try:
            Version(version)
        except InvalidVersion:  # pip would reject the line; such a distribution is left as it is
            continue
        pins[key] = f"{name}=={version}"
    for req in SLICER_PROVIDED:  # Slicer's own builds may have no pip metadata
        name = Requirement(req).name
        if normalize(name) not in pins:
            version = installed_version(name)
            if version:
                pins[normalize(name)] = f"{name}=={version}"
    return [pins[k] for k in sorted(pins)]


def write_constraints(path: os.PathLike, requirements: Optional[Iterable[str]] = None,
                      free: Iterable[str] = ()) -> Path:
    """Write :func:`constraints` to ``path`` (a pip ``-c`` file); returns the path."""
    path = Path(path)
    lines = ["# installed distributions, pinned: installing the MRHNet requirements must not change them"]
    path.write_text("\n".join(lines + constraints(requirements, free)) + "\n")
    return path


def selftest_skip_reason() -> Optional[str]:
    """For the module's self-test: None when it should run the whole flow, else why the engine parts
    are skipped. They are skipped only when the ctest registration asked for it (``MRHNET_SELFTEST_ENGINE
    =if-installed``, set by MRHNet/CMakeLists.txt for the Extensions Index build machines, which have no
    torch) and something is missing; "Reload and Test" in Slicer runs everything."""
    if os.environ.get(SELFTEST_ENV, "") != "if-installed":
        return None
    missing = missing_requirements()
    if not missing:
        return None
    return "engine tests skipped: " + ", ".join(missing) + " not installed (Extensions Index build)"


def _install_extension(manager, name: str) -> bool:
    """Install extension ``name`` from the Extensions server without Slicer's own questions (install now?
    restart now?): the user has answered MRHNet's, and a No to Slicer's would read as a failed download.
    The manager's interactive mode is restored afterwards; the restart is offered by the caller."""
    if manager.isExtensionInstalled(name):
        return True
    interactive = manager.interactive
    manager.interactive = False
    try:
        return bool(manager.installExtensionFromServer(name, False))
    finally:
        manager.interactive = interactive


def install_requirements(requirements: Optional[os.PathLike] = None, ask: bool = True,
                         torch_requirement: str = TORCH_REQUIREMENT) -> InstallResult:
    """Inside Slicer: install what is missing, after one confirmation (``ask=False``: none, e.g. in a
    self-test that the user started). The module's packages go through ``slicer.util.pip_install`` with a
    constraints file pinning everything installed; torch through the PyTorch extension (light-the-torch
    picks the build; no second question). Without the PyTorch extension, it is installed from the
    Extensions server, a restart is offered and :class:`RestartRequired` raised (the packages are
    installed by then). Raises :class:`InstallError` when the user declines or something fails.
    ``restart_required`` in the result: an imported torch was replaced (the engine runs in a child
    process, which gets the new one)."""
    import slicer

    req_file = Path(requirements) if requirements is not None else requirements_file()
    reqs = read_requirements(req_file)
    torch_spec = torch_requirement if torch_requirement.startswith("torch") else "torch" + torch_requirement
    too_old = missing_requirements([], torch=False, slicer_provided=True)
    if too_old:
        raise InstallError(f"this Slicer's {', '.join(too_old)} is missing or too old for MRHNet: use Slicer 5.8 or later")
    packages = missing_requirements(reqs, torch=False, slicer_provided=False)
    needs_torch = not _satisfied(torch_spec)
    if not packages and not needs_torch:
        return InstallResult()
    have_extension = importlib.util.find_spec("PyTorchUtils") is not None
    lines = []
    if packages:
        lines.append("Python packages: " + ", ".join(packages))
    if needs_torch:
        lines.append(f"PyTorch ({torch_spec}) through the PyTorch extension" if have_extension else
                     "the PyTorch extension (from the Extensions server; Slicer then restarts, and PyTorch is "
                     "installed on the next Apply)")
    text = ("MRHNet needs to install:\n\n" + "\n".join("- " + line for line in lines)
            + "\n\nPackages Slicer already has are kept as they are. This can take several minutes. Install now?")
    if ask and not slicer.util.confirmOkCancelDisplay(text, windowTitle="MRHNet: install requirements"):
        raise InstallError("MRHNet's Python requirements were not installed (declined)")
    result = InstallResult(installed=packages + ([torch_spec] if needs_torch else []))
    if packages:
        with tempfile.TemporaryDirectory(prefix="mrhnet-pip-") as tmp:
            pins = write_constraints(Path(tmp) / "constraints.txt", reqs)
            try:
                slicer.util.pip_install(["-r", str(req_file), "-c", str(pins)])
            except Exception as exc:  # pip's CalledProcessError; the log holds pip's output
                raise InstallError(f"pip could not install {', '.join(packages)} ({exc}); see the Python "
                                   "console for pip's message, restart Slicer and try again") from None
        importlib.invalidate_caches()
        still = missing_requirements(reqs, torch=False, slicer_provided=False)
        if still:
            raise InstallError(f"still missing after pip install: {', '.join(still)}")
    if needs_torch:
        if not have_extension:
            if not _install_extension(slicer.app.extensionsManagerModel(), "PyTorch"):
                raise InstallError("the PyTorch extension could not be installed from the Extensions server: "
                                   "install it in the Extensions Manager, restart Slicer and try again")
            if slicer.util.confirmYesNoDisplay("The PyTorch extension is installed. Slicer must restart before "
                                               "MRHNet can install PyTorch. Restart now?",
                                               windowTitle="MRHNet"):
                slicer.util.restart()
            raise RestartRequired("the PyTorch extension was installed: restart Slicer, then run again "
                                  "(PyTorch is installed then)")
        import PyTorchUtils

        # PyTorchUtils runs pip (through light-the-torch) for torch and torchvision; pip reads PIP_CONSTRAINT,
        # so the same pins keep numpy & co. where Slicer has them while torch itself is free. pip and
        # light-the-torch stay free too: PyTorchUtils first installs light-the-torch, and every release of it
        # that runs on Slicer 5.8's Python 3.9 needs an older pip than Slicer's
        result.restart_required = "torch" in sys.modules  # an imported torch is replaced
        previous = os.environ.get("PIP_CONSTRAINT")
        with tempfile.TemporaryDirectory(prefix="mrhnet-pip-") as tmp:
            pins = write_constraints(Path(tmp) / "constraints.txt", reqs + [torch_spec],
                                     free=TORCH_INSTALL_FREE)
            os.environ["PIP_CONSTRAINT"] = str(pins)
            try:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(  # the user answered our one question
                    askConfirmation=False, torchVersionRequirement=torch_spec[len("torch"):])
            except Exception as exc:  # pip's CalledProcessError and the like; the log holds pip's output
                raise InstallError(f"PyTorch ({torch_spec}) could not be installed ({exc}); see the Python console "
                                   "for pip's message, or install it with the PyTorch Utils module") from None
            finally:
                if previous is None:
                    os.environ.pop("PIP_CONSTRAINT", None)
                else:
                    os.environ["PIP_CONSTRAINT"] = previous
        importlib.invalidate_caches()
        if torch is None or not _satisfied(torch_spec):
            raise InstallError(f"PyTorch ({torch_spec}) was not installed: install it with the PyTorch Utils "
                               "module, restart Slicer and try again")
    return result
