# SPDX-License-Identifier: MIT OR Apache-2.0
"""Tests for convert_moonshine_ort.py.

The bootstrap logic is tested here with the standard library. The conversion itself needs
onnx/onnxruntime/numpy: those cases live in moonshine_ort_cases.py and run in the converter's own
pinned virtual environment (``$VOICEBOT_CACHE/convert-venv-<hash>``), which this test creates
the first time (one download from PyPI, ~30 s; provision.py creates the same environment when it
converts Moonshine base-en, so after `python3 models/provision.py` it is already there).
Synthetic models of a few kB only, a few seconds in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import convert_moonshine_ort as conv  # noqa: E402


class BootstrapTest(unittest.TestCase):
    def test_pins_are_exact(self):
        names = [r.split("==")[0] for r in conv.REQUIREMENTS]
        self.assertTrue(all(r.count("==") == 1 for r in conv.REQUIREMENTS))
        for needed in ("onnxruntime", "onnx", "numpy", "flatbuffers", "protobuf"):
            self.assertIn(needed, names)
        self.assertIn("onnxruntime==1.32.0", conv.REQUIREMENTS)
        self.assertIn("onnx==1.23.2", conv.REQUIREMENTS)

    def test_venv_location_follows_cache_and_pins(self):
        with mock.patch.dict(os.environ, {"VOICEBOT_CACHE": "/some/cache"}):
            d = conv.venv_dir()
            self.assertEqual(d.parent, Path("/some/cache"))
            self.assertTrue(d.name.startswith("convert-venv-"))
            self.assertEqual(d, conv.venv_dir())  # stable
            with mock.patch.object(conv, "REQUIREMENTS", conv.REQUIREMENTS + ("extra==1",)):
                self.assertNotEqual(conv.venv_dir(), d)

    def test_incomplete_venv_is_not_ready(self):
        with tempfile.TemporaryDirectory() as tmp:
            v = Path(tmp) / "v"
            self.assertFalse(conv.venv_ready(v))
            py = conv.venv_python(v)
            py.parent.mkdir(parents=True)
            py.write_text("")
            self.assertFalse(conv.venv_ready(v))  # no marker: an interrupted build
            (v / conv.VENV_MARKER).write_text("onnx==0.0.1\n")
            self.assertFalse(conv.venv_ready(v))  # other pins
            (v / conv.VENV_MARKER).write_text("\n".join(conv.REQUIREMENTS) + "\n")
            self.assertTrue(conv.venv_ready(v))

    def test_bad_command_line(self):
        proc = subprocess.run([sys.executable, str(HERE.parent / "convert_moonshine_ort.py"), "x.ort"],
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)
        proc = subprocess.run([sys.executable, str(HERE.parent / "convert_moonshine_ort.py"), "a", "b",
                               "--part", "nonsense"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)


class ConversionTest(unittest.TestCase):
    """Runs moonshine_ort_cases.py inside the pinned environment."""

    def test_conversion_cases(self):
        py = conv.ensure_venv()
        proc = subprocess.run([str(py), str(HERE / "moonshine_ort_cases.py")], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            self.fail("moonshine_ort_cases.py failed in the converter environment:\n" + proc.stderr[-6000:])
        self.assertRegex(proc.stderr, r"Ran \d+ tests")

    def test_cli_through_bootstrap(self):
        """The script re-executes itself in the environment: an unreadable input fails cleanly."""
        conv.ensure_venv()
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.ort"
            bad.write_bytes(b"\0" * 64)
            proc = subprocess.run([sys.executable, str(HERE.parent / "convert_moonshine_ort.py"), str(bad),
                                   str(Path(tmp) / "out.onnx")], capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("not an ORT-format model", proc.stderr)
            self.assertFalse((Path(tmp) / "out.onnx").exists())


if __name__ == "__main__":
    unittest.main()
