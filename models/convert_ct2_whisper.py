#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Convert a CTranslate2 Whisper model directory into a whisper.cpp ggml file.

Usage::

    python3 models/convert_ct2_whisper.py CT2_DIR OUT.bin [--quant q8_0]

Python 3.11 standard library only (no numpy/torch).  The output is
deterministic: the same input always gives byte-identical output.

Input: CTranslate2 ``model.bin`` (binary format v6)
------------------------------------------------------
All integers are little-endian.  A "string" is ``u16 n`` followed by ``n``
bytes, the last of which is a NUL terminator (``n`` counts it).

::

    u32     binary_version            (6 here; 4..6 accepted)
    string  spec name                 ("WhisperSpec")
    u32     spec revision             (3 here)
    u32     n_variables
    n_variables times:
        string  name                  ("encoder/layer_0/self_attention/linear_0/weight")
        u8      rank
        u32     dims[rank]            (row-major, outermost first; rank 0 = scalar)
        u8      dtype                 (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
        u32     n_bytes
        bytes   data[n_bytes]         (no alignment padding)
    u32     n_aliases
    n_aliases times:
        string  alias                 ("decoder/projection/weight")
        string  target variable       ("decoder/embeddings/weight")

Binary versions < 4 stored an item size instead of the dtype and are rejected.
Variables are written sorted by name.  Scalars (``encoder/num_heads`` as i16,
``decoder/activation`` as i8, ...) are model options, not weights.

WhisperSpec variable names and their whisper.cpp (= OpenAI PyTorch) names::

    encoder/conv{1,2}/{weight,bias}                  encoder.conv{1,2}.{weight,bias}
    encoder/position_encodings/encodings [1500,d]    encoder.positional_embedding
    encoder/layer_N/self_attention/layer_norm/gamma  encoder.blocks.N.attn_ln.weight   (beta -> .bias)
    encoder/layer_N/self_attention/linear_0          fused q|k|v [3d, d] -> attn.{query,key,value}
    encoder/layer_N/self_attention/linear_1          attn.out
    encoder/layer_N/ffn/layer_norm                   mlp_ln
    encoder/layer_N/ffn/linear_{0,1}                 mlp.{0,2}
    encoder/layer_norm                               encoder.ln_post
    decoder/embeddings/weight [n_vocab, d]           decoder.token_embedding.weight
    decoder/position_encodings/encodings [448, d]    decoder.positional_embedding
    decoder/layer_N/self_attention/...               decoder.blocks.N.attn / attn_ln (as encoder)
    decoder/layer_N/attention/layer_norm             cross_attn_ln
    decoder/layer_N/attention/linear_0               cross_attn.query
    decoder/layer_N/attention/linear_1               fused k|v [2d, d] -> cross_attn.{key,value}
    decoder/layer_N/attention/linear_2               cross_attn.out
    decoder/layer_N/ffn/...                          mlp_ln, mlp.0, mlp.2
    decoder/layer_norm                               decoder.ln
    decoder/projection/weight                        alias of decoder/embeddings/weight (tied)

CTranslate2 stores a bias for the fused *key* projection (zeros, since Whisper's
key projection has no bias).  whisper.cpp has no key bias; dropping it is exact
in any case, because a key bias only adds ``q . b_k`` to every score of a query
row, which softmax ignores.

Output: whisper.cpp ggml file (what ``whisper_model_load`` reads)
------------------------------------------------------------------
All little-endian int32 / float32::

    u32   magic 0x67676d6c ("ggml")
    i32   n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
          n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
          (ftype 1 = mostly f16; 2007 = GGML_QNT_VERSION 2 * 1000 + 7 mostly q8_0)
    i32   n_mel (80), n_fft (201);  f32 filters[n_mel][n_fft]  (Slaney mel bank)
    i32   n_tokens; n_tokens times: i32 len, bytes token  (raw bytes, not UTF-8 text)
          Only the ordinary BPE tokens are written (ids below <|endoftext|>: 50256
          for English-only models); whisper.cpp synthesises the specials
          ([_EOT_], [_SOT_], [_TT_n], ...) up to n_vocab itself, exactly as
          for OpenAI's own converted files.
    tensors until EOF; each:
          i32 n_dims, i32 name_len, i32 ttype (0 f32, 1 f16, 8 q8_0)
          i32 ne[n_dims]   (dims reversed: ne[0] is the innermost/contiguous one)
          bytes name; bytes data

Types follow whisper.cpp's loader: 2-D weight matrices and the conv kernels are
f16 (an f32 conv kernel aborts whisper.cpp unless the whole file is f32);
1-D tensors, the positional embeddings and the conv biases are f32.  Conv
biases are stored 2-D with ne = [1, n_state].  With ``--quant q8_0`` the 2-D
matrices become q8_0 (blocks of 32: f16 scale + 32 int8), like whisper.cpp's
``quantize`` tool, which uses the same reference rounding.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import math
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ConversionError",
    "CT2Tensor",
    "CT2Model",
    "read_ct2_model",
    "bytes_to_unicode",
    "decode_byte_level",
    "slaney_mel_filters",
    "GGMLTensor",
    "build_ggml_tensors",
    "write_ggml",
    "read_ggml",
    "convert",
    "main",
]

GGML_MAGIC = 0x67676D6C
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8
GGML_FTYPE_MOSTLY_F16 = 1
GGML_FTYPE_MOSTLY_Q8_0 = 7
QK8_0 = 32

# whisper.cpp hard-codes the STFT (16 kHz, n_fft 400, hop 160).
SAMPLE_RATE = 16000
N_FFT = 400

CT2_MAX_BINARY_VERSION = 6
CT2_DTYPES = {
    0: ("float32", 4),
    1: ("int8", 1),
    2: ("int16", 2),
    3: ("int32", 4),
    4: ("float16", 2),
    5: ("bfloat16", 2),
}
_STRUCT_CODE = {"float32": "f", "int8": "b", "int16": "h", "int32": "i", "float16": "e"}


class ConversionError(Exception):
    """A wrong or corrupt input; the message names the file and the reason."""


# --------------------------------------------------------------------------
# CTranslate2 reader
# --------------------------------------------------------------------------


@dataclass
class CT2Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: memoryview  # raw little-endian bytes, row-major

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def values(self) -> list:
        """Decode to Python numbers (floats for float types)."""
        if self.dtype == "bfloat16":
            raw = array.array("H", bytes(self.data))
            if sys.byteorder == "big":
                raw.byteswap()
            as32 = array.array("I", (v << 16 for v in raw))
            return list(struct.unpack("<%df" % len(as32), _le_bytes(as32)))
        code = _STRUCT_CODE[self.dtype]
        return list(struct.unpack("<%d%s" % (self.numel, code), self.data))

    def scalar(self):
        if self.numel != 1:
            raise ValueError(f"{self.name} is not a scalar (shape {self.shape})")
        return self.values()[0]


@dataclass
class CT2Model:
    path: Path
    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, CT2Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> CT2Tensor:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise ConversionError(f"{self.path}: missing variable '{name}'") from None

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ConversionError(
                f"{self.path}: truncated file: need {n} bytes for {what} at offset "
                f"{self.pos}, only {len(self.buf) - self.pos} left"
            )
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))

    def u8(self, what: str) -> int:
        return self.unpack("<B", what)[0]

    def u16(self, what: str) -> int:
        return self.unpack("<H", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def string(self, what: str) -> str:
        n = self.u16(what + " length")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ConversionError(
                f"{self.path}: corrupt file: {what} at offset {self.pos - n} is not NUL-terminated"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ConversionError(f"{self.path}: corrupt file: {what} is not UTF-8") from None


def read_ct2_model(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 4..6).

    Tensor data are zero-copy views into a read-only mmap (or a bytes object
    for empty files) that stays alive as long as the views do.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e.strerror or e}") from None
    cur = _Cursor(memoryview(buf), path)

    version = cur.u32("binary version")
    if version < 4 or version > CT2_MAX_BINARY_VERSION:
        raise ConversionError(
            f"{path}: not a supported CTranslate2 model: binary version {version} "
            f"(supported: 4..{CT2_MAX_BINARY_VERSION}; wrong file type?)"
        )
    spec = cur.string("spec name")
    revision = cur.u32("spec revision")
    model = CT2Model(path, version, spec, revision)

    n_vars = cur.u32("variable count")
    for i in range(n_vars):
        name = cur.string(f"name of variable #{i}")
        rank = cur.u8(f"rank of '{name}'")
        shape = cur.unpack("<%dI" % rank, f"dims of '{name}'") if rank else ()
        dtype_id = cur.u8(f"dtype of '{name}'")
        if dtype_id not in CT2_DTYPES:
            raise ConversionError(f"{path}: corrupt file: variable '{name}' has unknown dtype id {dtype_id}")
        dtype, itemsize = CT2_DTYPES[dtype_id]
        n_bytes = cur.u32(f"byte count of '{name}'")
        expected = math.prod(shape) * itemsize
        if n_bytes != expected:
            raise ConversionError(
                f"{path}: corrupt file: variable '{name}' shape {list(shape)} {dtype} "
                f"needs {expected} bytes, header says {n_bytes}"
            )
        data = cur.take(n_bytes, f"data of '{name}'")
        if name in model.variables:
            raise ConversionError(f"{path}: corrupt file: duplicate variable '{name}'")
        model.variables[name] = CT2Tensor(name, tuple(shape), dtype, data)

    n_alias = cur.u32("alias count")
    for i in range(n_alias):
        alias = cur.string(f"alias #{i}")
        target = cur.string(f"target of alias '{alias}'")
        if target not in model.variables:
            raise ConversionError(f"{path}: corrupt file: alias '{alias}' points to unknown variable '{target}'")
        model.aliases[alias] = target
    if cur.pos != len(cur.buf):
        raise ConversionError(
            f"{path}: corrupt file: {len(cur.buf) - cur.pos} unexpected trailing bytes at offset {cur.pos}"
        )
    return model


# --------------------------------------------------------------------------
# Vocabulary (GPT-2 byte-level BPE strings -> raw bytes)
# --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (256 entries)."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("\u00a1"), ord("\u00ac") + 1))
    keep += list(range(ord("\u00ae"), ord("\u00ff") + 1))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_DECODER = {c: b for b, c in bytes_to_unicode().items()}


def decode_byte_level(token: str) -> bytes:
    """'Ġhello' -> b' hello'; each character stands for one byte."""
    try:
        return bytes(_BYTE_DECODER[c] for c in token)
    except KeyError as e:
        raise ValueError(f"token {token!r} has a character {e.args[0]!r} outside the byte-level alphabet") from None


def load_vocabulary(ct2_dir: Path) -> list[str]:
    """Token strings by id, from vocabulary.txt (one per line) or vocabulary.json."""
    txt = ct2_dir / "vocabulary.txt"
    js = ct2_dir / "vocabulary.json"
    if txt.is_file():
        try:
            text = txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConversionError(f"{txt}: cannot read: {e}") from None
        # split on '\n' only: str.splitlines() would also split on U+0085 etc.
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return tokens
    if js.is_file():
        try:
            tokens = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{js}: cannot read: {e}") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConversionError(f"{js}: expected a JSON list of strings")
        return tokens
    raise ConversionError(f"{ct2_dir}: no vocabulary.txt or vocabulary.json")


def ggml_vocab(tokens: list[str], n_vocab: int, where: Path) -> list[bytes]:
    """The ordinary tokens (ids below <|endoftext|>) as raw bytes."""
    if len(tokens) != n_vocab:
        raise ConversionError(f"{where}: vocabulary has {len(tokens)} tokens, the model has {n_vocab} embeddings")
    try:
        eot = tokens.index("<|endoftext|>")
    except ValueError:
        raise ConversionError(f"{where}: vocabulary has no <|endoftext|> token") from None
    # whisper.cpp derives special ids from n_vocab: eot 50256 (English) / 50257 (multilingual).
    expected_eot = 50257 if n_vocab >= 51865 else 50256
    if eot != expected_eot:
        raise ConversionError(
            f"{where}: <|endoftext|> has id {eot}, whisper.cpp expects {expected_eot} for n_vocab {n_vocab}"
        )
    out = []
    for i, tok in enumerate(tokens[:eot]):
        try:
            out.append(decode_byte_level(tok))
        except ValueError as e:
            raise ConversionError(f"{where}: token id {i}: {e}") from None
    return out


# --------------------------------------------------------------------------
# Mel filter bank (librosa.filters.mel, htk=False, norm='slaney', float32)
# --------------------------------------------------------------------------

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(f: float) -> float:
    if f >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + math.log(f / _MIN_LOG_HZ) / _LOGSTEP
    return f / _F_SP


def _mel_to_hz(m: float) -> float:
    if m >= _MIN_LOG_MEL:
        return _MIN_LOG_HZ * math.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return _F_SP * m


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def slaney_mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = 80) -> list[list[float]]:
    """n_mels x (1 + n_fft//2) Slaney-style mel filters, float32-rounded.

    Mirrors librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (fmin 0,
    fmax sr/2, htk=False, norm='slaney', dtype float32), including its
    rounding steps: triangle weights are rounded to float32, then scaled by
    the float64 area normalisation 2 / (f[i+2] - f[i]) and rounded again.
    """
    n_bins = 1 + n_fft // 2
    bin_hz = 1.0 / (n_fft * (1.0 / sr))  # numpy.fft.rfftfreq(n_fft, 1/sr)
    fftfreqs = [k * bin_hz for k in range(n_bins)]
    max_mel = _hz_to_mel(sr / 2.0)
    step = max_mel / (n_mels + 1)  # numpy.linspace(0, max_mel, n_mels + 2)
    mels = [i * step for i in range(n_mels + 2)]
    mels[-1] = max_mel
    mel_f = [_mel_to_hz(m) for m in mels]
    fdiff = [b - a for a, b in zip(mel_f, mel_f[1:])]
    bank = []
    for i in range(n_mels):
        enorm = 2.0 / (mel_f[i + 2] - mel_f[i])
        row = []
        for k in range(n_bins):
            lower = -(mel_f[i] - fftfreqs[k]) / fdiff[i]
            upper = (mel_f[i + 2] - fftfreqs[k]) / fdiff[i + 1]
            w = _f32(max(0.0, min(lower, upper)))
            row.append(_f32(w * enorm))
        bank.append(row)
    return bank


# --------------------------------------------------------------------------
# Tensor mapping
# --------------------------------------------------------------------------


@dataclass
class GGMLTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order (outermost first); written reversed
    ttype: int
    data: bytes


def _as_f32_bytes(t: CT2Tensor) -> bytes:
    if t.dtype == "float32":
        return bytes(t.data)
    vals = t.values()
    return struct.pack("<%df" % len(vals), *vals)


def _as_f16_bytes(t: CT2Tensor) -> bytes:
    if t.dtype == "float16":
        return bytes(t.data)
    vals = t.values()
    try:
        return struct.pack("<%de" % len(vals), *vals)
    except (OverflowError, struct.error):
        raise ConversionError(f"{t.name}: value out of float16 range") from None


def _row_split(t: CT2Tensor, parts: int, where: Path) -> list[CT2Tensor]:
    """Split a fused [parts*d, ...] tensor along its first axis."""
    if not t.shape or t.shape[0] % parts:
        raise ConversionError(f"{where}: '{t.name}' shape {list(t.shape)} cannot be split in {parts}")
    rows = t.shape[0] // parts
    itemsize = len(t.data) // max(t.numel, 1)
    chunk = rows * math.prod(t.shape[1:]) * itemsize
    return [
        CT2Tensor(f"{t.name}[{p}]", (rows,) + tuple(t.shape[1:]), t.dtype, t.data[p * chunk:(p + 1) * chunk])
        for p in range(parts)
    ]


_FLOAT_DTYPES = ("float16", "float32", "bfloat16")


def _float_var(model: CT2Model, name: str, shape: tuple[int, ...]) -> CT2Tensor:
    t = model.get(name)
    if t.dtype not in _FLOAT_DTYPES:
        hint = " (quantized CTranslate2 models are not supported; use a float16/float32 export)" if t.dtype == "int8" else ""
        raise ConversionError(f"{model.path}: variable '{name}' has dtype {t.dtype}{hint}")
    if t.shape != shape:
        raise ConversionError(f"{model.path}: variable '{name}' has shape {list(t.shape)}, expected {list(shape)}")
    return t


def _count_layers(model: CT2Model, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    ids = {int(m.group(1)) for n in model.variables if (m := pat.match(n))}
    if ids != set(range(len(ids))):
        raise ConversionError(f"{model.path}: {prefix} layers are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def whisper_hparams(model: CT2Model) -> dict[str, int]:
    if model.spec != "WhisperSpec":
        raise ConversionError(f"{model.path}: spec is '{model.spec}', expected 'WhisperSpec'")
    for name in ("encoder/position_encodings/encodings", "decoder/position_encodings/encodings",
                 "decoder/embeddings/weight", "encoder/conv1/weight"):
        t = model.get(name)
        if len(t.shape) != {"encoder/conv1/weight": 3}.get(name, 2):
            raise ConversionError(f"{model.path}: variable '{name}' has unexpected shape {list(t.shape)}")
    enc_pe = model.get("encoder/position_encodings/encodings").shape
    dec_pe = model.get("decoder/position_encodings/encodings").shape
    emb = model.get("decoder/embeddings/weight").shape
    conv1 = model.get("encoder/conv1/weight").shape
    hp = {
        "n_vocab": emb[0],
        "n_audio_ctx": enc_pe[0],
        "n_audio_state": enc_pe[1],
        "n_audio_head": 0,
        "n_audio_layer": _count_layers(model, "encoder"),
        "n_text_ctx": dec_pe[0],
        "n_text_state": dec_pe[1],
        "n_text_head": 0,
        "n_text_layer": _count_layers(model, "decoder"),
        "n_mels": conv1[1],
    }
    for side in ("audio", "text"):
        var = ("encoder" if side == "audio" else "decoder") + "/num_heads"
        state = hp[f"n_{side}_state"]
        # Every Whisper size uses 64-dim heads; older CT2 exports lack num_heads.
        heads = int(model.get(var).scalar()) if model.has(var) else state // 64
        if heads <= 0 or state % heads:
            raise ConversionError(f"{model.path}: {var}={heads} does not divide the state size {state}")
        hp[f"n_{side}_head"] = heads
    if hp["n_audio_state"] != hp["n_text_state"] or emb[1] != hp["n_text_state"]:
        raise ConversionError(f"{model.path}: encoder/decoder widths differ ({hp['n_audio_state']} vs {hp['n_text_state']})")
    if hp["n_audio_layer"] == 0 or hp["n_text_layer"] == 0:
        raise ConversionError(f"{model.path}: no encoder or decoder layers found")
    for flag, want in (("decoder/pre_norm", 1), ("decoder/alibi", 0), ("decoder/scale_embeddings", 0)):
        if model.has(flag) and int(model.get(flag).scalar()) != want:
            raise ConversionError(f"{model.path}: {flag}={int(model.get(flag).scalar())}, whisper.cpp needs {want}")
    if model.has("decoder/projection/weight"):
        proj = model.get("decoder/projection/weight")
        if proj is not model.get("decoder/embeddings/weight") and bytes(proj.data) != bytes(model.get("decoder/embeddings/weight").data):
            raise ConversionError(f"{model.path}: decoder projection is not tied to the token embedding; whisper.cpp cannot represent that")
    return hp


def build_ggml_tensors(model: CT2Model, hp: dict[str, int]) -> list[GGMLTensor]:
    """All tensors whisper.cpp expects, in OpenAI state_dict order, f16/f32."""
    d = hp["n_audio_state"]
    n_mels = hp["n_mels"]
    out: list[GGMLTensor] = []

    def f32(name: str, t: CT2Tensor, shape=None):
        out.append(GGMLTensor(name, tuple(shape or t.shape), GGML_TYPE_F32, _as_f32_bytes(t)))

    def f16(name: str, t: CT2Tensor):
        out.append(GGMLTensor(name, tuple(t.shape), GGML_TYPE_F16, _as_f16_bytes(t)))

    def var(name: str, *shape: int) -> CT2Tensor:
        return _float_var(model, name, tuple(shape))

    def layer_norm(dst: str, src: str):
        f32(f"{dst}.weight", var(f"{src}/gamma", d))
        f32(f"{dst}.bias", var(f"{src}/beta", d))

    def linear(dst: str, src: str, n_out: int, n_in: int):
        f16(f"{dst}.weight", var(f"{src}/weight", n_out, n_in))
        f32(f"{dst}.bias", var(f"{src}/bias", n_out))

    def fused(dst: str, src: str, names: list[str]):
        k = len(names)
        ws = _row_split(var(f"{src}/weight", k * d, d), k, model.path)
        bs = _row_split(var(f"{src}/bias", k * d), k, model.path)
        for nm, w, b in zip(names, ws, bs):
            w.name = f"{dst}.{nm}.weight"
            f16(w.name, w)
            if nm != "key":  # whisper has no key bias (see module docstring)
                f32(f"{dst}.{nm}.bias", b)

    def mlp(dst: str, src: str):
        linear(f"{dst}.mlp.0", f"{src}/linear_0", 4 * d, d)
        linear(f"{dst}.mlp.2", f"{src}/linear_1", d, 4 * d)

    # encoder
    f32("encoder.positional_embedding", var("encoder/position_encodings/encodings", hp["n_audio_ctx"], d))
    f16("encoder.conv1.weight", var("encoder/conv1/weight", d, n_mels, 3))
    f32("encoder.conv1.bias", var("encoder/conv1/bias", d), shape=(d, 1))
    f16("encoder.conv2.weight", var("encoder/conv2/weight", d, d, 3))
    f32("encoder.conv2.bias", var("encoder/conv2/bias", d), shape=(d, 1))
    for i in range(hp["n_audio_layer"]):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        fused(f"{dst}.attn", f"{src}/self_attention/linear_0", ["query", "key", "value"])
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1", d, d)
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        mlp(dst, f"{src}/ffn")
        layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    # decoder
    f32("decoder.positional_embedding", var("decoder/position_encodings/encodings", hp["n_text_ctx"], d))
    f16("decoder.token_embedding.weight", var("decoder/embeddings/weight", hp["n_vocab"], d))
    for i in range(hp["n_text_layer"]):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        fused(f"{dst}.attn", f"{src}/self_attention/linear_0", ["query", "key", "value"])
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1", d, d)
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0", d, d)
        fused(f"{dst}.cross_attn", f"{src}/attention/linear_1", ["key", "value"])
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2", d, d)
        layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        mlp(dst, f"{src}/ffn")
        layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    layer_norm("decoder.ln", "decoder/layer_norm")
    return out


# --------------------------------------------------------------------------
# q8_0 quantisation (bit-exact with ggml's quantize_row_q8_0_ref)
# --------------------------------------------------------------------------

Q8_SKIP = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}


def quantize_q8_0(f16_bytes: bytes) -> bytes:
    """f16 values -> q8_0 blocks (f16 scale d = amax/127, qs = roundf(x/d)).

    float32 arithmetic is reproduced exactly: products/quotients of float32
    values are computed in double and rounded once to float32 (via array('f')),
    which equals the correctly rounded float32 operation.
    """
    n = len(f16_bytes) // 2
    if n % QK8_0:
        raise ValueError(f"{n} values is not a multiple of {QK8_0}")
    x = struct.unpack("<%de" % n, f16_bytes)
    nb = n // QK8_0
    amax = [max(map(abs, x[i:i + QK8_0])) for i in range(0, n, QK8_0)]
    d = array.array("f", [a / 127.0 for a in amax])
    ident = array.array("f", [1.0 / v if v else 0.0 for v in d])
    scaled = array.array("f", map(float.__mul__, x, (v for v in ident for _ in range(QK8_0))))
    # roundf: half away from zero; |v| <= 127.x so v +/- 0.5 is exact in double.
    qs = array.array("b", [int(v + 0.5) if v >= 0 else int(v - 0.5) for v in scaled])
    dh = struct.pack("<%de" % nb, *d)
    qb = qs.tobytes()
    out = bytearray(nb * (2 + QK8_0))
    for b in range(nb):
        o = b * (2 + QK8_0)
        out[o:o + 2] = dh[2 * b:2 * b + 2]
        out[o + 2:o + 2 + QK8_0] = qb[b * QK8_0:(b + 1) * QK8_0]
    return bytes(out)


def apply_q8_0(tensors: list[GGMLTensor]) -> None:
    for t in tensors:
        # like whisper.cpp's quantize tool: only 2-D tensors (conv kernels stay f16)
        if t.ttype == GGML_TYPE_F16 and len(t.shape) == 2 and t.name not in Q8_SKIP and t.shape[-1] % QK8_0 == 0:
            t.data = quantize_q8_0(t.data)
            t.ttype = GGML_TYPE_Q8_0


# --------------------------------------------------------------------------
# ggml writer / reader
# --------------------------------------------------------------------------

HPARAM_ORDER = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels")


def _le_bytes(a: array.array) -> bytes:
    if sys.byteorder == "big":
        a = array.array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def write_ggml(fp, hp: dict[str, int], ftype: int, filters: list[list[float]],
               vocab: list[bytes], tensors: list[GGMLTensor]) -> None:
    fp.write(struct.pack("<I", GGML_MAGIC))
    fp.write(struct.pack("<10i", *(hp[k] for k in HPARAM_ORDER)))
    fp.write(struct.pack("<i", ftype))
    n_fft = len(filters[0]) if filters else 0
    fp.write(struct.pack("<ii", len(filters), n_fft))
    for row in filters:
        fp.write(struct.pack("<%df" % n_fft, *row))
    fp.write(struct.pack("<i", len(vocab)))
    for tok in vocab:
        fp.write(struct.pack("<i", len(tok)))
        fp.write(tok)
    for t in tensors:
        name = t.name.encode("utf-8")
        dims = tuple(reversed(t.shape))
        fp.write(struct.pack("<iii", len(dims), len(name), t.ttype))
        fp.write(struct.pack("<%di" % len(dims), *dims))
        fp.write(name)
        fp.write(t.data)


def _ggml_nbytes(ttype: int, numel: int) -> int:
    if ttype == GGML_TYPE_F32:
        return 4 * numel
    if ttype == GGML_TYPE_F16:
        return 2 * numel
    if ttype == GGML_TYPE_Q8_0:
        return numel // QK8_0 * (2 + QK8_0)
    raise ValueError(f"unsupported ggml type {ttype}")


def read_ggml(path: str | os.PathLike) -> dict:
    """Parse a whisper ggml file (for tests and inspection)."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    cur = _Cursor(buf, path)
    magic = cur.u32("magic")
    if magic != GGML_MAGIC:
        raise ConversionError(f"{path}: bad magic 0x{magic:08x}")
    vals = cur.unpack("<11i", "hparams")
    hp = dict(zip(HPARAM_ORDER, vals[:10]))
    ftype = vals[10]
    n_mel, n_fft = cur.unpack("<ii", "filter dims")
    flat = cur.unpack("<%df" % (n_mel * n_fft), "filters")
    filters = [list(flat[i * n_fft:(i + 1) * n_fft]) for i in range(n_mel)]
    (n_tok,) = cur.unpack("<i", "vocab size")
    vocab = []
    for _ in range(n_tok):
        (ln,) = cur.unpack("<i", "token length")
        vocab.append(bytes(cur.take(ln, "token")))
    tensors = []
    while cur.pos < len(buf):
        n_dims, name_len, ttype = cur.unpack("<iii", "tensor header")
        dims = cur.unpack("<%di" % n_dims, "tensor dims")
        name = bytes(cur.take(name_len, "tensor name")).decode("utf-8")
        data = bytes(cur.take(_ggml_nbytes(ttype, math.prod(dims)), f"data of {name}"))
        tensors.append(GGMLTensor(name, tuple(reversed(dims)), ttype, data))
    return {"hparams": hp, "ftype": ftype, "filters": filters, "vocab": vocab, "tensors": tensors}


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def convert(ct2_dir: str | os.PathLike, out_path: str | os.PathLike, quant: str | None = None,
            log=lambda msg: None) -> dict[str, int]:
    ct2_dir = Path(ct2_dir)
    out_path = Path(out_path)
    if not ct2_dir.is_dir():
        raise ConversionError(f"{ct2_dir}: not a directory")
    model = read_ct2_model(ct2_dir / "model.bin")
    hp = whisper_hparams(model)
    log("hparams: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    vocab = ggml_vocab(load_vocabulary(ct2_dir), hp["n_vocab"], ct2_dir)
    filters = slaney_mel_filters(SAMPLE_RATE, N_FFT, hp["n_mels"])
    tensors = build_ggml_tensors(model, hp)
    ftype = GGML_FTYPE_MOSTLY_F16
    if quant == "q8_0":
        log("quantizing to q8_0 ...")
        apply_q8_0(tensors)
        ftype = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + GGML_FTYPE_MOSTLY_Q8_0
    elif quant not in (None, "f16"):
        raise ConversionError(f"unsupported --quant {quant!r} (supported: f16, q8_0)")

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fp:
            write_ggml(fp, hp, ftype, filters, vocab, tensors)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, out_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"{out_path}: cannot write: {e.strerror or e}") from None
    log(f"wrote {out_path}: {len(tensors)} tensors, {len(vocab)} tokens, {len(filters)} mel filters")
    return hp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a CTranslate2 Whisper model to whisper.cpp ggml.")
    ap.add_argument("ct2_dir", help="directory with model.bin and vocabulary.txt")
    ap.add_argument("out", help="output ggml .bin file")
    ap.add_argument("--quant", choices=["f16", "q8_0"], default="f16", help="weight type of the matrices (default f16)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        convert(args.ct2_dir, args.out, None if args.quant == "f16" else args.quant, log)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        h = hashlib.sha256()
        with open(args.out, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        print(f"sha256 {h.hexdigest()}  {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
