# SPDX-License-Identifier: MIT OR Apache-2.0
"""Synthetic CTranslate2 Whisper models for the tests (no real weights needed).

The CT2 writer here is written independently of the reader in
convert_ct2_whisper.py, following CTranslate2's own serializer
(ctranslate2/specs/model_spec.py: u16 length incl. NUL + bytes for strings,
u8 rank, u32 dims, u8 dtype id, u32 byte count, data; then aliases).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import convert_ct2_whisper as conv  # noqa: E402

DT_F32, DT_I8, DT_I16, DT_F16 = 0, 1, 2, 4
N_VOCAB_EN = 51864


def ct2_string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables, aliases=(), spec="WhisperSpec", revision=3, version=6) -> bytes:
    """variables: iterable of (name, shape, dtype_id, data bytes)."""
    out = [struct.pack("<I", version), ct2_string(spec), struct.pack("<I", revision)]
    variables = sorted(variables, key=lambda v: v[0])
    out.append(struct.pack("<I", len(variables)))
    for name, shape, dtype, data in variables:
        out.append(ct2_string(name))
        out.append(struct.pack("<B", len(shape)))
        out.append(struct.pack("<%dI" % len(shape), *shape))
        out.append(struct.pack("<BI", dtype, len(data)))
        out.append(data)
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        out.append(ct2_string(alias) + ct2_string(target))
    return b"".join(out)


def f16_pattern(n: int, seed: int) -> bytes:
    """n distinct-ish, exactly representable float16 values (deterministic)."""
    return struct.pack("<%de" % n, *(((i * 7 + seed * 13) % 2001 - 1000) / 1024.0 for i in range(n)))


def tiny_whisper_vars(d=64, heads=2, n_mels=80, enc_layers=1, dec_layers=1,
                      n_audio_ctx=12, n_text_ctx=8, n_vocab=N_VOCAB_EN):
    """All WhisperSpec variables of a tiny model, float16, as (name, shape, dtype, bytes)."""
    vs = []
    seed = [0]

    def f16(name, *shape):
        seed[0] += 1
        n = 1
        for s in shape:
            n *= s
        vs.append((name, shape, DT_F16, f16_pattern(n, seed[0])))

    def ln(prefix):
        f16(prefix + "/gamma", d)
        f16(prefix + "/beta", d)

    def lin(prefix, n_out, n_in):
        f16(prefix + "/weight", n_out, n_in)
        f16(prefix + "/bias", n_out)

    f16("encoder/conv1/weight", d, n_mels, 3)
    f16("encoder/conv1/bias", d)
    f16("encoder/conv2/weight", d, d, 3)
    f16("encoder/conv2/bias", d)
    f16("encoder/position_encodings/encodings", n_audio_ctx, d)
    vs.append(("encoder/num_heads", (), DT_I16, struct.pack("<h", heads)))
    for i in range(enc_layers):
        p = f"encoder/layer_{i}"
        ln(p + "/self_attention/layer_norm")
        lin(p + "/self_attention/linear_0", 3 * d, d)
        lin(p + "/self_attention/linear_1", d, d)
        ln(p + "/ffn/layer_norm")
        lin(p + "/ffn/linear_0", 4 * d, d)
        lin(p + "/ffn/linear_1", d, 4 * d)
    ln("encoder/layer_norm")

    # token embedding: one row pattern repeated (keeps the fixture fast)
    vs.append(("decoder/embeddings/weight", (n_vocab, d), DT_F16, f16_pattern(d, 99) * n_vocab))
    f16("decoder/position_encodings/encodings", n_text_ctx, d)
    vs.append(("decoder/num_heads", (), DT_I16, struct.pack("<h", heads)))
    vs.append(("decoder/activation", (), DT_I8, struct.pack("<b", 1)))
    vs.append(("decoder/pre_norm", (), DT_I8, struct.pack("<b", 1)))
    vs.append(("decoder/alibi", (), DT_I8, struct.pack("<b", 0)))
    for i in range(dec_layers):
        p = f"decoder/layer_{i}"
        ln(p + "/self_attention/layer_norm")
        lin(p + "/self_attention/linear_0", 3 * d, d)
        lin(p + "/self_attention/linear_1", d, d)
        ln(p + "/attention/layer_norm")
        lin(p + "/attention/linear_0", d, d)
        lin(p + "/attention/linear_1", 2 * d, d)
        lin(p + "/attention/linear_2", d, d)
        ln(p + "/ffn/layer_norm")
        lin(p + "/ffn/linear_0", 4 * d, d)
        lin(p + "/ffn/linear_1", d, 4 * d)
    ln("decoder/layer_norm")
    return vs


ALIASES = [("decoder/projection/weight", "decoder/embeddings/weight")]


def vocabulary(n_vocab=N_VOCAB_EN) -> list[str]:
    """Byte-level token strings: 256 single bytes, then words, then specials."""
    enc = conv.bytes_to_unicode()
    eot = 50257 if n_vocab >= 51865 else 50256
    toks = [enc[b] for b in range(256)]
    for i in range(256, eot):
        word = (" w%d" % i).encode() if i % 3 else ("é%d" % i).encode()
        toks.append("".join(enc[b] for b in word))
    toks.append("<|endoftext|>")
    while len(toks) < n_vocab:
        toks.append("<|x%d|>" % len(toks))
    return toks


def write_tiny_model(directory: Path, variables=None, aliases=ALIASES, **kw) -> dict:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variables = tiny_whisper_vars(**kw) if variables is None else variables
    (directory / "model.bin").write_bytes(ct2_bytes(variables, aliases))
    (directory / "vocabulary.txt").write_text("\n".join(vocabulary(kw.get("n_vocab", N_VOCAB_EN))) + "\n", encoding="utf-8")
    (directory / "config.json").write_text("{}", encoding="utf-8")
    return {name: (shape, dtype, data) for name, shape, dtype, data in variables}
