"""The web app (``mrhnet app``): path confinement to the data folder, saving, and the whole app driven by a
real browser (the system chromium through playwright) on the simulated brain.

The browser test starts ``mrhnet app`` as a subprocess on a free loopback port, runs the simulated brain
through the models, and analyses screenshot pixels of the real Slicer slice views: greyscale before a run
and after a cancelled run, coloured overlay inside the brain and greyscale outside it after a run. The run
is a ``mrhnet job`` child process of the app (the GUI controller's), gone after Cancel.

Access: the page, its files and its websocket are refused without the app's token (HTTP and websocket
clients against the real app, and the browser); a non-loopback address is never served without a token.
Only 127.0.0.1 is ever served by these tests."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from MRHNetLib.errors import MRHNetError
from MRHNetLib.gui.webapp import (MAPS_FOLDER, SIM_FOLDER, TOKEN_ENV, access_token, access_url,
                                  list_model_folders, list_subjects, maps_folder, resolve_in, save_maps,
                                  subject_files, token_cookie)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GREY_CHROMA = 30  # max(R,G,B) - min(R,G,B) at or below this: a grey pixel
COLOUR_CHROMA = 60  # at or above this: a coloured (overlay) pixel


# --- paths: no browser needed -----------------------------------------------------------------------
def _data_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder with two subjects and a model folder, and a folder outside it with a subject."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    for folder in (data / "mouse1", data / "group" / "mouse2", outside / "secret"):
        folder.mkdir(parents=True)
        (folder / "t2w.nii.gz").write_bytes(b"not read by listing")
    (data / "models" / "mine.mrhnet").mkdir(parents=True)
    (outside / "theirs.mrhnet").mkdir()
    return data, outside


def test_resolve_in_refuses_paths_outside_the_data_folder(tmp_path):
    data, outside = _data_folder(tmp_path)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    (data / "inner").symlink_to(data / "mouse1", target_is_directory=True)
    assert resolve_in(data, "mouse1") == (data / "mouse1").resolve()
    assert resolve_in(data, "group/mouse2") == (data / "group" / "mouse2").resolve()
    assert resolve_in(data, ".") == data.resolve()
    assert resolve_in(data, "inner") == (data / "mouse1").resolve()  # a link that stays inside is fine
    for bad in ("../outside", "mouse1/../../outside", str(outside), "/etc/passwd", "~/x", "escape",
                "escape/secret"):
        with pytest.raises(MRHNetError, match="refused"):
            resolve_in(data, bad)


def test_listing_stays_inside_the_data_folder(tmp_path):
    data, outside = _data_folder(tmp_path)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    (data / "models" / "link.mrhnet").symlink_to(outside / "theirs.mrhnet", target_is_directory=True)
    assert list_subjects(data) == ["group/mouse2", "mouse1"]
    assert list_model_folders(data) == ["models/mine.mrhnet"]


def test_save_maps_is_atomic_and_never_overwrites_an_input(tmp_path):
    """Maps are saved under mrhnet predict's names (``<target>.nii.gz``), never over a subject's input."""
    from MRHNetLib.data.io import Volume, read_volume

    folder = tmp_path / "mouse"
    folder.mkdir()
    vol = Volume(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), np.diag([0.1, 0.1, 0.1, 1.0]))
    (folder / "t2w.nii.gz").write_bytes(b"input")
    paths = save_maps(folder / MAPS_FOLDER, {"af": vol, "af_std": vol}, subject_files(folder))
    assert [p.name for p in paths] == ["af.nii.gz", "af_std.nii.gz"]
    np.testing.assert_allclose(read_volume(paths[0]).data, vol.data, rtol=1e-6)
    assert not [p for p in (folder / MAPS_FOLDER).iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    # histology of the subject is an input: never replaced, and then nothing at all is written
    (folder / "mbp.nii.gz").write_bytes(b"an input")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(MRHNetError, match="input"):
        save_maps(folder, {"af": vol, "mbp": vol}, subject_files(folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_maps_are_saved_inside_the_data_folder_only(tmp_path):
    data, outside = _data_folder(tmp_path)
    assert maps_folder(data, data / "mouse1") == (data / "mouse1" / MAPS_FOLDER).resolve()
    assert maps_folder(data, None) == (data / SIM_FOLDER / MAPS_FOLDER).resolve()
    assert maps_folder(data, data) == (data / MAPS_FOLDER).resolve()
    (data / "group" / "mouse2" / MAPS_FOLDER).symlink_to(outside, target_is_directory=True)
    with pytest.raises(MRHNetError, match="refused"):
        maps_folder(data, data / "group" / "mouse2")
    # a link to another subject inside the data folder: saving would replace that subject's files
    (data / "mouse1" / MAPS_FOLDER).symlink_to(data / "group", target_is_directory=True)
    with pytest.raises(MRHNetError, match="mouse1/maps: refused, it is a link"):
        maps_folder(data, data / "mouse1")


def test_app_on_a_subject_folder_and_model_choices_stay_inside(tmp_path):
    """``mrhnet app SUBJECT`` shows that subject; model choices from the page cannot name files elsewhere."""
    from MRHNetLib.simulation.phantom import simulate_subject
    from MRHNetLib.gui.webapp import SIMULATED, WebApp

    subject = tmp_path / "mouse"
    simulate_subject("C1", seed=1, size="small").save(subject)
    outside = tmp_path / "elsewhere.mrhnet"
    outside.mkdir()
    app = WebApp(subject)
    assert [s["value"] for s in app.state.subjects] == [SIMULATED, "."]
    assert app.state.subject == "."
    for bad in ("data:../elsewhere.mrhnet", f"data:{outside}", f"shipped:{outside}", "shipped:../x", str(outside)):
        with pytest.raises(MRHNetError):
            app.model_path(bad)


def test_app_server_loads_no_torch(tmp_path):
    """The server lists models, devices and subjects without torch: only the job's child process runs
    networks, so the server starts fast and stays small."""
    probe = ("import sys; from MRHNetLib.gui.webapp import WebApp; app = WebApp(sys.argv[1]); "
             "assert app.state.devices[0] == 'cpu' and app.state.models, app.state.devices; "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_app_runs_a_subject_folder_through_the_controller(tmp_path, monkeypatch):
    """A subject folder of the data folder: checked from its headers (the server reads only its T2w), run and
    evaluated in the controller's child, the maps saved as ``maps/<target>.nii.gz`` beside the inputs. The
    server loop's polling is replaced by the controller's own wait here (no server runs)."""
    import torch

    from MRHNetLib.data import io
    from MRHNetLib.data.protocol import default_protocol
    from MRHNetLib.gui.webapp import WebApp
    from MRHNetLib.network.model import MRHNet
    from MRHNetLib.network.modelfile import ModelInfo, save_model
    from MRHNetLib.simulation.phantom import simulate_subject

    data = tmp_path / "data"
    phantom = simulate_subject("C1", seed=1, size="small")
    folder = phantom.save(data / "mouse")
    protocol, other = phantom.protocol(), default_protocol(n_dirs=10)
    torch.manual_seed(0)
    for name, proto in (("af", protocol), ("other", other)):
        save_model(data / "models" / f"{name}.mrhnet", MRHNet(proto.n_channels, depth=0, width=8),
                   ModelInfo(proto, depth=0, target="af", width=8))
    inputs_before = {p.name: p.read_bytes() for p in folder.iterdir()}
    app = WebApp(data)
    monkeypatch.setattr(app, "_follow", lambda: None)
    assert app.state.subject == "mouse"
    read, real_read = [], io.read_volume
    monkeypatch.setattr(io, "read_volume", lambda path, **k: read.append(Path(path).name) or real_read(path, **k))
    app._on_subject("mouse")
    assert app.state.status == "mouse: loaded" and read == ["t2w.nii.gz"]
    app.state.selected_models = ["data:models/other.mrhnet"]
    app._check_models()
    assert len(app.state.check_errors) == 1 and "other.mrhnet: mouse vs model" in app.state.check_errors[0]
    assert read == ["t2w.nii.gz"]  # the check read headers only

    app.state.selected_models, app.state.device = ["data:models/af.mrhnet"], "cpu"
    app._check_models()
    assert app.state.check_errors == []
    real_predict = app.controller.predict  # a failure that is not the engine's own (e.g. a full /tmp): one line

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app.controller, "predict", disk_full)
    app.run()
    assert app.state.error == "OSError: [Errno 28] No space left on device" and not app.state.running
    monkeypatch.setattr(app.controller, "predict", real_predict)
    app.run()
    assert app.state.running and app.controller.task.spec["subject"] == str(folder)
    assert app.controller.task.spec["chunk_voxels"] is None  # the engine's default for the device
    app.controller.wait(timeout=180, on_event=app._on_event)
    assert not app.state.running and app.state.runs == 1 and not app.state.error, app.state.error
    assert [o["value"] for o in app.state.overlays] == ["af"]
    assert app.state.eval_rows[1][0] == "AF network" and app.state.eval_figure.startswith("data:image/png;base64,")

    saving = app.save()  # the maps are copied now, the files written by a worker thread
    assert app.state.saving and app.state.saved == "saving..." and app.save() is None  # one save at a time
    saving.get_loop().run_until_complete(saving)
    assert app.state.saved == "saved mouse/maps/af.nii.gz" and not app.state.saving
    saved = io.read_volume(folder / "maps" / "af.nii.gz")
    np.testing.assert_allclose(saved.affine, phantom.images["t2w"].affine, atol=1e-5)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == inputs_before


# --- the app in a real browser ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_models(data: Path) -> tuple[list[str], str]:
    """Model choices for the run (shipped demo models when present, else small random ones in the data
    folder), a deliberately slow model in the data folder for the cancel check, and one whose protocol
    (10 directions per shell) the simulated brain does not fit."""
    from MRHNetLib.network.catalog import list_models
    from MRHNetLib.network.model import MRHNet
    from MRHNetLib.network.modelfile import ModelInfo, save_model
    from MRHNetLib.data.protocol import default_protocol

    protocol = default_protocol()
    torch_seed = 0
    import torch

    torch.manual_seed(torch_seed)
    demo = [e for e in list_models() if e.kind == "demo"]
    if demo:
        run = ["shipped:" + e.name for e in demo]
    else:
        run = []
        for target in ("af", "nf", "mbp"):
            save_model(data / "models" / f"{target}.mrhnet", MRHNet(protocol.n_channels, 3, width=16),
                       ModelInfo(protocol, 3, target, width=16, description="random test model"))
            run.append(f"data:models/{target}.mrhnet")
    save_model(data / "models" / "slow.mrhnet", MRHNet(protocol.n_channels, 12, width=64),
               ModelInfo(protocol, 12, "af", description="slow random model for the cancel check"))
    other = default_protocol(n_dirs=10)
    save_model(data / "models" / "other-protocol.mrhnet", MRHNet(other.n_channels, 2, width=8),
               ModelInfo(other, 2, "af", description="random model of another protocol"))
    return run, "data:models/slow.mrhnet"


class AppProcess:
    """``mrhnet app DATA --port N`` as a subprocess, its output collected for failure messages."""

    def __init__(self, data: Path, port: int, *options: str, extra_env: dict | None = None):
        env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", PYTHONUNBUFFERED="1")
        env.pop(TOKEN_ENV, None)  # a token of the user's shell must not leak into the tests
        env.update(extra_env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "MRHNetLib", "app", str(data), "--port", str(port),
                                      *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "MRHNet app serving" in line:
                self.url = line.rsplit(" at ", 1)[1].strip()
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> str:
        self._ready.wait(timeout)
        assert self.url, "app did not start:\n" + self.log()
        return self.url

    def log(self) -> str:
        return "".join(l for l in self.lines if "WindowResizeEvent" not in l and "ConfigureEvent" not in l)[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _job_children(pid: int) -> list[int]:
    """The ``python -m MRHNetLib job`` processes that process ``pid`` started (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z" and b"MRHNetLib" in cmdline and b"job" in cmdline:
            found.append(int(entry.name))
    return found


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=2) - rgb.min(axis=2)


def _view_shots(page) -> list[np.ndarray]:
    """Screenshots of the three slice views (the images streamed from the server)."""
    views = page.locator("#views img")
    assert views.count() >= 3, "slice views are missing"
    return [_rgb(views.nth(i).screenshot()) for i in range(3)]


def _state(page, key: str):
    return page.evaluate(f"window.trame.state.get({key!r})")


def _wait_status(page, text: str, timeout_s: float, app: AppProcess) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status, error = page.inner_text("#status"), _state(page, "error")
        if text in status:
            return status
        assert not error, f"app error: {error}\n{app.log()}"
        time.sleep(0.2)
    raise AssertionError(f"status {text!r} not reached, last {page.inner_text('#status')!r}\n{app.log()}")


def _wait_state(page, key: str, value, timeout_s: float, app: AppProcess) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _state(page, key) == value:
            return
        assert not _state(page, "error"), f"app error: {_state(page, 'error')}\n{app.log()}"
        time.sleep(0.2)
    raise AssertionError(f"{key} != {value!r} (status {page.inner_text('#status')!r})\n{app.log()}")


# --- access: the token --------------------------------------------------------------------------------
def _mrhnet_app(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    return subprocess.run([sys.executable, "-m", "MRHNetLib", "app", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_access_token_rules():
    tokens = {access_token("127.0.0.1", environ={}) for _ in range(3)}
    assert len(tokens) == 3 and all(len(t) >= 40 for t in tokens)  # random, 256 bits
    assert access_token("0.0.0.0", environ={TOKEN_ENV: "from-env"}) == "from-env"
    assert access_token("0.0.0.0", "given", environ={TOKEN_ENV: "from-env"}) == "given"
    assert access_token("127.0.0.1", no_token=True, environ={TOKEN_ENV: "from-env"}) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "127.0.0.2", "example.org"):
        with pytest.raises(MRHNetError, match="--no-token refused"):
            access_token(host, no_token=True, environ={})
    for bad in ("", " ", " padded "):
        with pytest.raises(MRHNetError, match="empty"):
            access_token("127.0.0.1", bad, environ={})
    with pytest.raises(MRHNetError, match="not both"):
        access_token("127.0.0.1", "x", no_token=True, environ={})
    assert access_url("127.0.0.1", 8080, "a b/c") == "http://127.0.0.1:8080/?token=a+b%2Fc"
    assert access_url("::1", 9, None) == "http://[::1]:9/"
    assert "secret" not in token_cookie("secret") and token_cookie("a") != token_cookie("b")


def test_app_never_serves_a_network_address_without_a_token(tmp_path):
    """``--no-token`` off loopback exits with code 2 before the app is built or anything listens."""
    for host in ("0.0.0.0", "::", "127.0.0.2"):
        t0 = time.time()
        refused = _mrhnet_app(str(tmp_path), "--host", host, "--no-token", "--port", str(_free_port()))
        assert refused.returncode == 2 and "--no-token refused" in refused.stderr, refused.stderr
        assert "serving" not in refused.stdout and time.time() - t0 < 30
    both = _mrhnet_app(str(tmp_path), "--token", "x", "--no-token")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    empty = _mrhnet_app(str(tmp_path), "--token", "")
    assert empty.returncode == 2 and "empty" in empty.stderr
    missing = _mrhnet_app(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "data folder does not exist" in missing.stderr
    import socket

    with socket.socket() as taken:  # a port another program listens on: one line, no traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = _mrhnet_app(str(tmp_path), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "cannot serve on 127.0.0.1:" in busy.stderr and "Traceback" not in busy.stderr, \
        busy.stderr
    assert "serving" not in busy.stdout


def test_app_command_prints_the_token_url_and_warns(tmp_path, monkeypatch, capsys):
    """``mrhnet app``'s wiring, with the web app replaced by a stand-in that serves nothing: the token (from
    the environment, random, or none on loopback) reaches the server and the printed URL; warnings."""
    from types import SimpleNamespace

    import MRHNetLib.gui.webapp as webapp
    from MRHNetLib.cli import main

    started = {}

    class StandIn:
        def __init__(self, folder, simulated_size):
            self.ready = []
            self.ctrl = SimpleNamespace(on_server_ready=SimpleNamespace(add=self.ready.append))
            self.server = SimpleNamespace(port=4321)

        def start(self, host, port, token):
            started.update(host=host, port=port, token=token)
            for callback in self.ready:
                callback()

    monkeypatch.setattr(webapp, "WebApp", StandIn)
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    assert main(["app", str(tmp_path), "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert started == {"host": "0.0.0.0", "port": 0, "token": "env-token"}
    assert f"serving {tmp_path.resolve()} at http://0.0.0.0:4321/?token=env-token" in out
    assert "has the token" in err and "plain HTTP" in err and "ssh -L 0:127.0.0.1:0" in err

    monkeypatch.delenv(TOKEN_ENV)
    assert main(["app", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert started["host"] == "127.0.0.1" and len(started["token"]) >= 40
    assert out.strip().endswith(f"at http://127.0.0.1:4321/?token={started['token']}") and not err
    assert main(["app", str(tmp_path), "--token", "given"]) == 0
    assert started["token"] == "given" and "?token=given" in capsys.readouterr().out

    assert main(["app", str(tmp_path), "--no-token"]) == 0
    out, err = capsys.readouterr()
    assert started["token"] is None and out.strip().endswith("at http://127.0.0.1:4321/")
    assert "every user of this machine" in err


async def _probe_access(base: str, token: str) -> None:
    """HTTP and websocket requests against the running app, with and without its token."""
    import re

    import aiohttp

    def session(**kwargs) -> aiohttp.ClientSession:  # cookies for 127.0.0.1 need an "unsafe" jar
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)

    async def status(client, path: str, **kwargs) -> int:
        async with client.get(base + path, allow_redirects=False, **kwargs) as r:
            if r.status == 403:
                assert "access refused" in await r.text() and r.headers["Cache-Control"] == "no-store"
                assert token not in await r.text()
            return r.status

    async def ws_status(client, path: str = "/ws", **kwargs) -> int:
        try:
            async with client.ws_connect(base + path, **kwargs) as ws:
                assert not ws.closed
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status

    cookie = token_cookie(token)
    async with session() as first:  # the printed address leaves the token in a cookie, not in the address bar
        async with first.get(f"{base}/index.html?token={token}&x=1", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/index.html?x=1", (r.status, r.headers)
        assert [c.value for c in first.cookie_jar if c.key == cookie] == [token]
    async with session() as good:
        async with good.get(f"{base}/?token={token}") as r:  # the printed URL (redirects to index.html)
            assert r.status == 200, r.status
            page = await r.text()
        assert [c.value for c in good.cookie_jar if c.key == cookie] == [token]
        morsel = next(c for c in good.cookie_jar if c.key == cookie)
        assert morsel["httponly"] and morsel["samesite"] == "Strict"
        assets = re.findall(r'(?:src|href)="\.?/?([^"?#]+\.(?:js|css))"', page)
        assert assets, page[:500]
        # with the cookie of that first visit: the page, its files and its websocket
        for path in ("/", "/index.html", *(f"/{a}" for a in assets)):
            assert await status(good, path) in (200, 302), path
        assert await ws_status(good) == 101

    async with session() as anyone:
        for path in ("/", "/index.html", f"/{assets[0]}", "/ws", "/nothing-here",
                     "/?token=wrong", f"/?token={token[:-1]}", f"/?token={token}x"):
            assert await status(anyone, path) == 403, path
        assert await status(anyone, "/index.html", headers={"Cookie": f"{cookie}=wrong"}) == 403
        assert await status(anyone, "/index.html", headers={"Authorization": "token wrong"}) == 403
        assert await ws_status(anyone) == 403
        assert await ws_status(anyone, "/ws?token=wrong") == 403
        assert await ws_status(anyone, headers={"Cookie": f"{cookie}={token}x"}) == 403
        # the token in the query or an Authorization header also opens the websocket, and the files
        assert await ws_status(anyone, f"/ws?token={token}") == 101
        assert await ws_status(anyone, headers={"Authorization": f"token {token}"}) == 101
        assert await status(anyone, f"/{assets[0]}", headers={"Authorization": f"token {token}"}) == 200


def test_app_requires_its_token_for_the_page_its_files_and_the_websocket(tmp_path):
    import asyncio
    import secrets

    token = secrets.token_urlsafe(24)
    port = _free_port()
    app = AppProcess(tmp_path, port, extra_env={TOKEN_ENV: token})  # from the environment: not in ps
    try:
        url = app.wait_ready()
        base = f"http://127.0.0.1:{port}"
        assert url == f"{base}/?token={token}"
        assert token.encode() not in Path(f"/proc/{app.proc.pid}/cmdline").read_bytes()
        assert "no token" not in app.log() and "listening on" not in app.log()
        asyncio.run(_probe_access(base, token))
        assert app.proc.poll() is None, app.log()
    finally:
        app.stop()


async def _probe_loopback(base: str, port: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as client:
        async def status(**headers) -> int:
            async with client.get(base + "/index.html", headers=headers, allow_redirects=False) as r:
                return r.status

        async def ws_status(**headers) -> int:
            try:
                async with client.ws_connect(base + "/ws", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

        assert await status() == 200 and await status(Host=f"localhost:{port}") == 200
        assert await status(Host="evil.example") == 403  # DNS rebinding: a page of evil.example at 127.0.0.1
        assert await status(Host=f"evil.example:{port}") == 403
        assert await ws_status(Origin=f"http://127.0.0.1:{port}") == 101
        assert await ws_status(Origin="http://evil.example") == 403


def test_app_without_token_answers_only_its_loopback_address(tmp_path):
    """``--no-token``: no page of another site reaches the app, even through a name that resolves to
    127.0.0.1 (its Host header, or its websocket's Origin, is not this machine's loopback address)."""
    import asyncio

    port = _free_port()
    app = AppProcess(tmp_path, port, "--no-token")
    try:
        assert app.wait_ready() == f"http://127.0.0.1:{port}/"
        asyncio.run(_probe_loopback(f"http://127.0.0.1:{port}", port))
        assert app.proc.poll() is None, app.log()
    finally:
        app.stop()


def test_webapp_in_a_real_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright
    from scipy.ndimage import binary_dilation

    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "t2w.nii.gz").write_bytes(b"private")
    run_models, slow_model = _make_models(data)
    files_before = sorted(p.relative_to(data) for p in data.rglob("*"))

    app = AppProcess(data, _free_port())
    try:
        url = app.wait_ready()
        base, _, query = url.partition("?")
        assert url.startswith("http://127.0.0.1:") and query.startswith("token=") and "warning: " not in app.log()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            # without the token (a page in its own context: no cookie): the refusal, no app
            stranger = browser.new_page()
            response = stranger.goto(base)
            assert response.status == 403 and "access refused" in stranger.inner_text("body")
            time.sleep(1.0)
            assert stranger.locator("#status").count() == 0 and stranger.locator("#views").count() == 0
            stranger.close()

            page = browser.new_page(viewport={"width": 1400, "height": 760})
            assert page.goto(url).status == 200  # the printed URL
            page.wait_for_selector("#status", timeout=30_000)
            _wait_status(page, "loaded", 60, app)
            page.wait_for_selector("#views img", timeout=30_000)
            time.sleep(1.0)
            before = _view_shots(page)
            # the T2w alone: greyscale everywhere, and a visible brain in every view
            brains = []
            for shot in before:
                assert (_chroma(shot) <= GREY_CHROMA).mean() > 0.99
                brain = shot.max(axis=2) > 8  # not black: the T2w of the brain
                assert brain.mean() > 0.05, "brain not visible in a slice view"
                brains.append(binary_dilation(brain, iterations=4))

            # the protocol check's errors are shown before running, and Run is disabled
            page.evaluate("window.trame.state.set('selected_models', ['data:models/other-protocol.mrhnet'])")
            page.wait_for_function("window.trame.state.get('check_errors').length > 0", timeout=20_000)
            assert "other-protocol" in page.inner_text("#check-errors")
            assert page.locator("#run-button").is_disabled()

            # Cancel stops a run and leaves no outputs (in the scene, on the page, on disk)
            page.evaluate(f"window.trame.state.set('selected_models', [{slow_model!r}])")
            page.wait_for_function("!document.querySelector('#run-button').disabled", timeout=20_000)
            assert not _state(page, "check_errors"), _state(page, "check_errors")
            page.click("#run-button")
            page.wait_for_function("window.trame.state.get('running') && window.trame.state.get('progress') > 0",
                                   timeout=30_000)
            jobs = _job_children(app.proc.pid)
            assert len(jobs) == 1, "the run is not one `mrhnet job` child process of the app"
            t0 = time.time()
            page.click("#cancel-button")
            _wait_status(page, "cancelled", 10, app)
            cancel_s = time.time() - t0
            assert not _state(page, "overlays") and not _state(page, "running")
            assert not Path(f"/proc/{jobs[0]}").exists() and not _job_children(app.proc.pid)
            time.sleep(0.5)
            for shot in _view_shots(page):
                assert (_chroma(shot) <= GREY_CHROMA).mean() > 0.99
            assert sorted(p.relative_to(data) for p in data.rglob("*")) == files_before

            # a run: coloured overlay where the brain is, greyscale elsewhere
            page.evaluate(f"window.trame.state.set('selected_models', {run_models!r})")
            page.wait_for_function("!document.querySelector('#run-button').disabled", timeout=20_000)
            t0 = time.time()
            page.click("#run-button")
            _wait_state(page, "runs", 1, 60, app)
            run_s = time.time() - t0
            assert len(_state(page, "overlays")) == len(run_models)
            # the simulated brain has its histology: the evaluation table and figure are shown
            rows = _state(page, "eval_rows")
            targets = sorted(o["value"] for o in _state(page, "overlays"))
            assert sorted(r[0].split()[0].lower() for r in rows if r[0].endswith("network")) == targets
            assert page.locator("#eval-figure").evaluate("img => img.naturalWidth") > 100
            deadline, shots = time.time() + 15, before
            while time.time() < deadline:
                shots = _view_shots(page)
                if all((_chroma(s) >= COLOUR_CHROMA).mean() > 0.02 for s in shots):
                    break
                time.sleep(0.3)
            for shot, brain in zip(shots, brains):
                coloured = _chroma(shot) >= COLOUR_CHROMA
                assert coloured[brain].mean() > 0.3, "overlay missing inside the brain"
                assert coloured[~brain].mean() < 0.01, "overlay outside the brain"
                assert (_chroma(shot)[~brain] <= GREY_CHROMA).mean() > 0.98
            page.screenshot(path=str(tmp_path / "webapp.png"))

            # a second run replaces the outputs (same overlays, no new ones)
            page.click("#run-button")
            _wait_state(page, "runs", 2, 60, app)
            assert len(_state(page, "overlays")) == len(run_models)

            # save: maps written into the data folder, nothing else touched
            page.click("#save-button")
            page.wait_for_function("document.querySelector('#saved').innerText.includes('saved')", timeout=20_000)
            saved = sorted(p.name for p in (data / SIM_FOLDER / MAPS_FOLDER).iterdir())
            assert saved == sorted(f"{t}.nii.gz" for t in targets)  # the names mrhnet predict writes

            # a request for a path outside the data folder is refused (and nothing is loaded from there)
            for bad in ("../outside", str(outside)):
                page.evaluate(f"window.trame.state.set('subject', {bad!r})")
                page.wait_for_function("(window.trame.state.get('error') || '').includes('refused')",
                                       timeout=10_000)
                assert "refused" in page.inner_text("#error")
                assert len(_state(page, "overlays")) == len(run_models)  # the loaded subject stays
                page.evaluate("window.trame.state.set('error', '')")

            # a reload without ?token= works: the first visit left a cookie (page and websocket)
            assert page.goto(base).status == 200
            page.wait_for_selector("#views img", timeout=30_000)
            _wait_state(page, "runs", 2, 20, app)
            browser.close()
        print(f"cancel took {cancel_s:.2f} s; run of {len(run_models)} models {run_s:.1f} s")
    finally:
        app.stop()


# --- the README figure: ``python Testing/tests/test_webapp.py Resources/figures/webapp.png`` ------------
def make_figure(out: Path, size: str = "medium", overlay: str = "mbp") -> Path:
    """Screenshot of the app after running the shipped models on the simulated brain (PNG, < 300 KB)."""
    import tempfile

    from PIL import Image
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        run_models, _ = _make_models(data)
        for extra in ("slow", "other-protocol"):
            shutil.rmtree(data / "models" / f"{extra}.mrhnet")
        app = AppProcess(data, _free_port(), "--simulated-size", size)
        try:
            url = app.wait_ready()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(url)
                page.wait_for_selector("#status", timeout=30_000)
                _wait_status(page, "loaded", 600, app)
                page.evaluate(f"window.trame.state.set('selected_models', {run_models!r})")
                page.wait_for_function("!document.querySelector('#run-button').disabled", timeout=60_000)
                page.click("#run-button")
                _wait_state(page, "runs", 1, 1200, app)
                page.evaluate(f"window.trame.state.set('overlay', {overlay!r})")
                time.sleep(3)
                png = page.screenshot()
                browser.close()
        finally:
            app.stop()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


if __name__ == "__main__":
    target = make_figure(Path(sys.argv[1]), *(sys.argv[2:3] or ["medium"]))
    print(f"{target}: {target.stat().st_size // 1024} KB")
