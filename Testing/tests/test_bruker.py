"""Protocols from the original Bruker ParaVision method files."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from MRHNetLib.data.bruker import (GRADIENT_TO_RAS, classify_method_files, parse_mt_order, protocol_from_method_files,
                              read_method)
from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.protocol import Protocol
from MRHNetLib.resources import resource


@pytest.fixture(scope="module")
def params(shared_data) -> Path:
    return shared_data / "mr-parameters"


def jcamp_array(path: Path, key: str) -> np.ndarray:
    """A numeric array parameter read straight from the text (independent of BrkRaw)."""
    text = path.read_text()
    m = re.search(rf"##\${key}=\( ([\d, ]+) \)\n(.*?)(?=\n##|\n\$\$)", text, re.S)
    assert m, key
    shape = tuple(int(s) for s in m.group(1).split(","))
    return np.array(m.group(2).split(), dtype=float).reshape(shape)


def test_original_protocol_from_method_files(params):
    proto = protocol_from_method_files(params / "dwi_b2000_method", params / "dwi_b5000_method")
    assert proto.n_channels == 67
    assert [c.role for c in proto.channels[-3:]] == ["t2w", "mt_on", "mt_off"]  # the original code's order
    for role, paper_b, text_file in (("dwi_b2000", 1915, "dwi_b2000_method"), ("dwi_b5000", 4814, "dwi_b5000_method")):
        b, g = proto.shell(role)
        assert len(b) == 32
        b0 = b < 100
        assert b0[:2].all() and b0.sum() == 2  # 2 b0 first
        assert abs(b[~b0].mean() - paper_b) / paper_b < 0.02
        np.testing.assert_allclose(b, jcamp_array(params / text_file, "PVM_DwEffBval"))
        dirs = g[~b0]
        assert len(dirs) == 30
        np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)
        assert np.abs(g[b0]).max() == 0
        cos = np.abs(dirs @ dirs.T)[np.triu_indices(30, 1)]
        assert np.degrees(np.arccos(cos.max())) > 10  # 30 distinct directions
        # the gradient-frame directions of the file, under the documented frame mapping
        raw = jcamp_array(params / text_file, "PVM_DwDir")
        np.testing.assert_allclose(dirs, raw @ GRADIENT_TO_RAS.T, atol=1e-6)


def test_method_file_details_and_roles(params):
    roles = classify_method_files([params])
    assert {r: m.path.name for r, m in roles.items()} == {
        "dwi_b2000": "dwi_b2000_method", "dwi_b5000": "dwi_b5000_method", "t2w": "3DT2_method",
        "mt_on": "MTON_method", "mt_off": "MTOFF_method"}
    dwi = roles["dwi_b2000"]
    assert dwi.n_b0 == 2 and dwi.echo_time_ms == pytest.approx(32.888) and dwi.repetition_time_ms == 320
    assert dwi.resolution_mm[:2] == (0.1, 0.1) and dwi.matrix == (128, 104, 36)
    t2 = roles["t2w"]
    assert t2.effective_te_ms == 50 and t2.repetition_time_ms == 800 and t2.resolution_mm == (0.1, 0.1, 0.1)
    assert roles["mt_on"].mt_on and roles["mt_on"].mt_power_uT == 20 and roles["mt_on"].mt_offset_hz == -3000
    assert roles["mt_off"].mt_power_uT < 0.01 and not t2.mt_on


def test_mt_order_and_errors(params, tmp_path):
    assert parse_mt_order("T2/MTON/OFF".replace("OFF", "MTOFF")) == ["t2w", "mt_on", "mt_off"]
    proto = protocol_from_method_files(params / "dwi_b2000_method", params / "dwi_b5000_method", "T2w MT-off MT-on")
    assert [c.role for c in proto.channels[-3:]] == ["t2w", "mt_off", "mt_on"]  # the original README's order
    with pytest.raises(MRHNetError, match="mt-order"):
        parse_mt_order("t2w,mt_on,mt_on")
    with pytest.raises(MRHNetError, match="not a diffusion method file"):
        protocol_from_method_files(params / "3DT2_method", params / "dwi_b5000_method")
    with pytest.raises(MRHNetError, match="not a Bruker ParaVision method file"):
        read_method(params / "grad_nissl.txt")
    damaged = tmp_path / "damaged_method"
    text = (params / "dwi_b2000_method").read_text()
    damaged.write_text(text.replace("##$PVM_DwDir=( 30, 3 )", "##$PVM_DwDir=( 29, 3 )"))
    with pytest.raises(MRHNetError, match="damaged_method"):
        read_method(damaged)


def test_shipped_protocol_matches_the_method_files(shared_data, tmp_path):
    from MRHNetLib.cli import main
    from MRHNetLib.network.matlab import original_protocol

    shipped = resource("protocols", "original_method_files")
    for f in ("dwi_b2000_method", "dwi_b5000_method", "3DT2_method", "MTON_method", "MTOFF_method"):
        assert hashlib.sha256((shipped / f).read_bytes()).digest() == \
            hashlib.sha256((shared_data / "mr-parameters" / f).read_bytes()).digest()
    proto, acq = original_protocol()
    assert proto.normalisation.method == "global_max" and proto.voxel_size_mm == 0.0625
    assert json.loads(resource("protocols", "original.json").read_text()) == proto.to_dict()
    out = tmp_path / "p.json"
    assert main(["protocol", str(shared_data / "mr-parameters"), "--original-settings", "--json", str(out)]) == 0
    assert Protocol.from_json(out.read_text()).to_dict() == proto.to_dict()
