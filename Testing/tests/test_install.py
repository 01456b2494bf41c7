"""The module's Python requirements inside Slicer (MRHNetLib.gui.install): only what the child process
needs, a constraints file that pins everything installed, missing_requirements, the self-test switch,
and install_requirements driven with stand-ins for slicer / PyTorchUtils. The check against the package
registry (Slicer 5.10's numpy and scipy kept) is in test_slicer_requirements.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest

from MRHNetLib.gui import install

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = {"scikit-image", "scikit-learn", "matplotlib", "tqdm", "mat-io", "brkraw"}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[install.normalize(name)] = version
    return out


def test_requirements_file_holds_only_what_the_module_needs():
    reqs = install.read_requirements()
    assert install.requirements_file() == ROOT / "MRHNet" / "Resources" / "requirements.txt"
    names = {install.normalize(r.split(">")[0].split("=")[0].split("<")[0]) for r in reqs}
    assert names == {"nibabel", "pynrrd", "dipy", "safetensors"}
    assert not names & (OPTIONAL | {"torch", "numpy", "scipy", "simpleitk"})
    declared = {install.normalize(d.split(">")[0].split("<")[0].split("=")[0])
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert names <= declared and OPTIONAL <= declared  # pip install mrhnet still gets everything


def test_constraints_pin_every_installed_distribution(tmp_path):
    path = install.write_constraints(tmp_path / "c.txt", ["nibabel>=5.0", "dipy>=1.8"])
    pinned = pins(path)
    installed = {install.normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name in ("numpy", "scipy", "simpleitk", "nibabel", "dipy", "torch", "pip"):
        assert pinned[name] == metadata.version(name), name
    assert set(pinned) == set(installed)
    # the file is what pip reads: one name==version a line
    assert all(line.count("==") == 1 for line in path.read_text().splitlines()[1:])


def test_constraints_leave_an_outdated_requirement_free_but_never_slicers_own():
    free = {install.normalize(line.split("==")[0]) for line in install.constraints(["nibabel>=999", "numpy>=999"])}
    assert "nibabel" not in free  # must be upgraded: pinning it would make the install impossible
    assert "numpy" in free and "scipy" in free  # Slicer's: pip must refuse rather than replace it


def test_missing_requirements():
    assert install.missing_requirements() == []  # this machine has the engine installed
    missing = install.missing_requirements(["numpy>=1", "nibabel>=999", "mrhnet-no-such-package>=1"], torch=False)
    assert missing == ["nibabel>=999", "mrhnet-no-such-package>=1"]
    assert install.TORCH_REQUIREMENT not in install.missing_requirements([])


def test_install_helpers_import_nothing_heavy():
    code = ("import sys, MRHNetLib.gui.install as i; i.missing_requirements(); i.constraints(); "
            "heavy = {'numpy', 'torch', 'scipy', 'slicer', 'qt'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_selftest_skips_engine_parts_only_on_the_index_build(monkeypatch):
    monkeypatch.delenv(install.SELFTEST_ENV, raising=False)
    monkeypatch.setattr(install, "missing_requirements", lambda *a, **k: ["torch>=2.1", "dipy>=1.8"])
    assert install.selftest_skip_reason() is None  # Reload and Test: the whole flow
    monkeypatch.setenv(install.SELFTEST_ENV, "if-installed")
    assert "torch>=2.1, dipy>=1.8 not installed" in install.selftest_skip_reason()
    monkeypatch.setattr(install, "missing_requirements", lambda *a, **k: [])
    assert install.selftest_skip_reason() is None  # a build machine with everything runs everything
    cmake = (ROOT / "MRHNet" / "CMakeLists.txt").read_text()
    assert f'PROPERTY ENVIRONMENT "{install.SELFTEST_ENV}=if-installed"' in cmake


class FakeSlicer:
    """Just the parts of ``slicer`` that install_requirements uses, recording the calls."""

    def __init__(self, answer=True, extension_installs=True):
        self.prompts, self.pip_calls, self.constraints, self.extensions, self.restarted = [], [], [], [], False
        self.answer, self.extension_installs = answer, extension_installs
        fake = self

        class Manager:
            interactive = True  # Slicer asks "install now?" itself unless this is off

            def isExtensionInstalled(self, name):
                return False

            def installExtensionFromServer(self, name, restart=True):
                # Slicer's own install and restart questions would follow ours
                assert restart is False and self.interactive is False
                fake.extensions.append(name)
                return fake.extension_installs

        def confirm(text, **kwargs):
            fake.prompts.append(text)
            return fake.answer

        def pip_install(args):
            fake.pip_calls.append(list(args))
            fake.constraints.append(Path(args[args.index("-c") + 1]).read_text())

        def restart():
            fake.restarted = True

        self.manager = Manager()
        self.app = types.SimpleNamespace(extensionsManagerModel=lambda: self.manager)
        self.util = types.SimpleNamespace(confirmOkCancelDisplay=confirm, confirmYesNoDisplay=confirm,
                                          pip_install=pip_install, restart=restart)


@pytest.fixture
def fake_slicer(monkeypatch, tmp_path):
    """A requirements file with one missing package that the fake pip 'installs', no torch, no PyTorch
    extension (each test adds what it needs)."""
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnibabel>=5.0\nmrhnet-fake-dep>=1.0\n")
    fake = FakeSlicer()
    monkeypatch.setitem(sys.modules, "slicer", fake)
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    state = {"fake-dep": None, "torch": None}
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    real = install.installed_version

    def installed_version(name):
        key = install.normalize(name)
        if key == "mrhnet-fake-dep":
            return state["fake-dep"]
        if key == "torch":
            return state["torch"]
        return real(name)

    monkeypatch.setattr(install, "installed_version", installed_version)
    original_pip = fake.util.pip_install

    def pip_install(args):
        original_pip(args)
        state["fake-dep"] = "1.2"

    fake.util.pip_install = pip_install
    return fake, req, state


def test_install_requirements_one_prompt_constraints_and_torch_from_the_extension(fake_slicer, monkeypatch):
    fake, req, state = fake_slicer
    calls = []

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            calls.append((askConfirmation, torchVersionRequirement))
            # light-the-torch's pip reads PIP_CONSTRAINT: Slicer's packages pinned, torch & torchvision free
            pinned_now = pins(Path(os.environ["PIP_CONSTRAINT"]))
            assert pinned_now["numpy"] == metadata.version("numpy") and "torch" not in pinned_now
            assert "torchvision" not in pinned_now
            # PyTorchUtils installs light-the-torch first, which needs an older pip than Slicer 5.8's
            assert "pip" not in pinned_now and "light-the-torch" not in pinned_now
            state["torch"] = "2.5.1+cu121"
            return types.ModuleType("torch")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name, *a: object() if name == "PyTorchUtils" else None)
    torch_imported = "torch" in sys.modules  # replacing an imported torch needs a restart
    result = install.install_requirements(req)
    assert len(fake.prompts) == 1 and "mrhnet-fake-dep>=1.0" in fake.prompts[0] and "PyTorch" in fake.prompts[0]
    assert fake.pip_calls == [["-r", str(req), "-c", fake.pip_calls[0][3]]]
    pinned = {line.split("==")[0].lower(): line.split("==")[1] for line in fake.constraints[0].splitlines()
              if "==" in line}
    assert pinned["numpy"] == metadata.version("numpy") and pinned["scipy"] == metadata.version("scipy")
    assert not any(c[0] == "torch" for c in (a for a in fake.pip_calls))  # torch never through pip
    assert calls == [(False, ">=2.1")] and "PIP_CONSTRAINT" not in os.environ  # no second question
    assert result.installed == ["mrhnet-fake-dep>=1.0", "torch>=2.1"] and result.restart_required == torch_imported
    fake.prompts.clear()
    assert install.install_requirements(req).installed == [] and fake.prompts == []  # nothing left to do


def test_install_requirements_offers_the_pytorch_extension(fake_slicer, monkeypatch):
    fake, req, state = fake_slicer
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(install.RestartRequired, match="restart Slicer"):
        install.install_requirements(req)
    assert "the PyTorch extension" in fake.prompts[0] and len(fake.pip_calls) == 1  # packages installed first
    assert fake.extensions == ["PyTorch"] and fake.restarted and fake.manager.interactive is True  # restored
    assert len(fake.prompts) == 2 and "Restart" in fake.prompts[1]


def test_install_requirements_declined_installs_nothing(fake_slicer):
    fake, req, _ = fake_slicer
    fake.answer = False
    with pytest.raises(install.InstallError, match="declined"):
        install.install_requirements(req)
    assert fake.pip_calls == [] and fake.extensions == []


BLOCKER = textwrap.dedent("""
    import sys
    # not installed by the module (tqdm: dipy needs it, so it comes along): make them unimportable
    for name in ("skimage", "sklearn", "matplotlib", "matio", "brkraw"):
        sys.modules[name] = None
""")



@pytest.mark.slow
def test_child_process_work_runs_without_evaluation_and_cli_packages(tmp_path):
    """Phantom, prediction and training, as the module's child process runs them, with scikit-image,
    scikit-learn, matplotlib, mat-io and brkraw unimportable."""
    code = BLOCKER + textwrap.dedent(f"""
        from pathlib import Path
        import MRHNetLib.cli  # the child (python -m MRHNetLib job ...) builds the parser of every command
        MRHNetLib.cli.build_parser()
        from MRHNetLib.simulation.phantom import simulate_subject
        from MRHNetLib.data.subject import load_subject
        from MRHNetLib.network.infer import predict, write_maps
        from MRHNetLib.network.train import TrainConfig, train
        out = Path({str(tmp_path)!r})
        folder = simulate_subject("C1", size="small").save(out / "C1")
        subject = load_subject(folder)
        write_maps(predict(subject, ["af"], device="cpu"), out / "maps")
        config = TrainConfig(depth=1, width=8, epochs=1, batch_size=256, val_samples=64, device="cpu")
        train([subject], "af", out / "tiny.mrhnet", config, run_dir=out / "run")
        assert (out / "maps" / "af.nii.gz").is_file() and (out / "tiny.mrhnet").is_dir()
        assert all(sys.modules.get(n) is None for n in ("skimage", "sklearn", "matplotlib"))
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_a_failing_torch_install_is_one_line(fake_slicer, monkeypatch):
    """pip failing inside PyTorchUtils (CalledProcessError) reaches the user as one InstallError line, and the
    constraints variable is restored."""
    import subprocess

    fake, req, state = fake_slicer

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            raise subprocess.CalledProcessError(1, ["pip", "install", "light-the-torch>=0.5"])

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name, *a: object() if name == "PyTorchUtils" else None)
    with pytest.raises(install.InstallError, match=r"PyTorch \(torch>=2.1\) could not be installed") as err:
        install.install_requirements(req)
    assert "\n" not in str(err.value) and "PIP_CONSTRAINT" not in os.environ
