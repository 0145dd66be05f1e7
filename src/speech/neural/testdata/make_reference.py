#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Make the reference data for the tests of src/speech/neural/dsp.rs and hibari.rs from the
Python package they port (hibari-tts 0.2.1, run with onnxruntime 1.32.0 on one thread).

    python3 make_reference.py HIBARI_DIR OUT_DIR

HIBARI_DIR is the directory holding the `hibari` package (the unpacked wheel); numpy and
onnxruntime must be importable. The sentence is "Thank you for calling." and its phoneme ids
are hibari's own G2P output (`θˈæŋk ju fɔɹ kˈɔlɪŋ.`, listed below so that the Rust test does
not need a G2P).

dsp_reference.bin (< 100 KB): a 12-frame slice of the model's outputs for that sentence,
frames 20..32 (unvoiced -> voiced: f0 rises from 0 to 80 and ~230 Hz), rounded to float16 so
that the file is small, and hibari's `dsp.synth` output for exactly those (float16-valued)
inputs with the noise term off (a generator that returns zeros). Layout, little-endian:
b"HDSP", u32 frames F, u32 bins (601), then lh, theta, ln, lr, phi as float16 [bins, F]
row-major, f0 as float32 [F], and the expected waveform as float32 [F * 300].

hibari_reference.json: the ids, the frame count and, per model output, the FNV-1a 64 hash of
its float32 bytes plus its sum and sum of squares (float64), for the model parity test.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

IDS = [0, 119, 156, 72, 112, 53, 16, 52, 63, 16, 48, 76, 123, 16, 53, 156, 76, 54, 102, 112, 4, 0]
NAMES = ["lh", "theta", "ln", "lr", "phi", "f0"]
FRAMES = slice(20, 32)


class NoNoise:
    """Stands in for numpy's Generator: the noise branch of dsp.synth becomes zero."""

    def standard_normal(self, shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    hibari_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(hibari_dir))
    import onnxruntime as ort
    from hibari import dsp

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(hibari_dir / "hibari" / "assets" / "hibari.onnx"), so,
                                providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"ids": np.asarray([IDS], np.int64), "speed": np.asarray([1.0], np.float32)})
    outs = {n: o[0] for n, o in zip([o.name for o in sess.get_outputs()], outs)}

    ref = {"ids": IDS, "speed": 1.0, "onnxruntime": ort.__version__, "frames": int(outs["f0"].shape[0]), "outputs": {}}
    for n in NAMES:
        a = np.ascontiguousarray(outs[n], dtype=np.float32)
        ref["outputs"][n] = {"fnv1a64": f"{fnv1a64(a.tobytes()):016x}", "sum": float(a.sum(dtype=np.float64)),
                             "sumsq": float((a.astype(np.float64) ** 2).sum())}
    (out_dir / "hibari_reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")

    parts = {n: np.ascontiguousarray(outs[n][:, FRAMES]).astype(np.float16) for n in NAMES[:5]}
    f0 = np.ascontiguousarray(outs["f0"][FRAMES], dtype=np.float32)
    bins, F = parts["lh"].shape
    wav = dsp.synth(*(parts[n].astype(np.float32) for n in NAMES[:5]), f0, NoNoise()).astype(np.float32)
    assert wav.shape == (F * dsp.HOP,)
    with open(out_dir / "dsp_reference.bin", "wb") as f:
        f.write(b"HDSP" + struct.pack("<II", F, bins))
        for n in NAMES[:5]:
            f.write(parts[n].astype("<f2").tobytes())
        f.write(f0.astype("<f4").tobytes())
        f.write(wav.astype("<f4").tobytes())
    print(f"frames {ref['frames']}, slice F={F}, peak {np.abs(wav).max():.4f}, rms {np.sqrt(np.mean(wav ** 2)):.4f}")


if __name__ == "__main__":
    main()
