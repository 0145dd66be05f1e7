# SPDX-License-Identifier: MIT OR Apache-2.0
"""Tests for convert_ct2_whisper.py (stdlib unittest; no network, no real model)."""

from __future__ import annotations

import contextlib
import io
import math
import struct
import tempfile
import unittest
from pathlib import Path

import fixtures
from fixtures import conv


class TmpDirCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()


class RoundTripTest(TmpDirCase):
    """Synthetic CT2 model -> ggml -> read back."""

    D = 64

    @classmethod
    def setUpClass(cls):
        cls._ctmp = tempfile.TemporaryDirectory()
        base = Path(cls._ctmp.name)
        cls.ct2_dir = base / "ct2"
        cls.src = fixtures.write_tiny_model(cls.ct2_dir, d=cls.D, heads=2, enc_layers=2, dec_layers=1)
        cls.out = base / "out.bin"
        conv.convert(cls.ct2_dir, cls.out)
        cls.g = conv.read_ggml(cls.out)
        cls.t = {t.name: t for t in cls.g["tensors"]}

    @classmethod
    def tearDownClass(cls):
        cls._ctmp.cleanup()

    def src_bytes(self, name):
        return self.src[name][2]

    def src_f32(self, name):
        raw = self.src_bytes(name)
        vals = struct.unpack("<%de" % (len(raw) // 2), raw)
        return struct.pack("<%df" % len(vals), *vals)

    def test_ct2_reader_matches_writer(self):
        m = conv.read_ct2_model(self.ct2_dir / "model.bin")
        self.assertEqual((m.binary_version, m.spec, m.spec_revision), (6, "WhisperSpec", 3))
        self.assertEqual(set(m.variables), set(self.src))
        for name, (shape, _dtype, data) in self.src.items():
            self.assertEqual(m.variables[name].shape, tuple(shape), name)
            self.assertEqual(bytes(m.variables[name].data), data, name)
        self.assertEqual(m.aliases, {"decoder/projection/weight": "decoder/embeddings/weight"})
        self.assertEqual(m.get("encoder/num_heads").scalar(), 2)

    def test_header(self):
        hp = self.g["hparams"]
        self.assertEqual(hp, {
            "n_vocab": 51864, "n_audio_ctx": 12, "n_audio_state": 64, "n_audio_head": 2,
            "n_audio_layer": 2, "n_text_ctx": 8, "n_text_state": 64, "n_text_head": 2,
            "n_text_layer": 1, "n_mels": 80,
        })
        self.assertEqual(self.g["ftype"], 1)
        raw = self.out.read_bytes()
        self.assertEqual(raw[:4], b"lmgg")  # 0x67676d6c little-endian
        self.assertEqual(len(self.g["filters"]), 80)
        self.assertEqual(len(self.g["filters"][0]), 201)

    def test_vocab_stops_before_endoftext(self):
        vocab = self.g["vocab"]
        self.assertEqual(len(vocab), 50256)
        self.assertEqual(vocab[0], b"\x00")
        self.assertEqual(vocab[32], b" ")
        self.assertEqual(vocab[257], b" w257")
        self.assertEqual(vocab[258], "é258".encode("utf-8"))

    def test_tensor_set_is_what_whisper_cpp_expects(self):
        expected = {"encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias",
                    "encoder.conv2.weight", "encoder.conv2.bias", "encoder.ln_post.weight",
                    "encoder.ln_post.bias", "decoder.positional_embedding",
                    "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias"}
        block = ["mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                 "attn_ln.weight", "attn_ln.bias", "attn.query.weight", "attn.query.bias", "attn.key.weight",
                 "attn.value.weight", "attn.value.bias", "attn.out.weight", "attn.out.bias"]
        cross = ["cross_attn_ln.weight", "cross_attn_ln.bias", "cross_attn.query.weight",
                 "cross_attn.query.bias", "cross_attn.key.weight", "cross_attn.value.weight",
                 "cross_attn.value.bias", "cross_attn.out.weight", "cross_attn.out.bias"]
        for i in range(2):
            expected |= {f"encoder.blocks.{i}.{n}" for n in block}
        expected |= {f"decoder.blocks.0.{n}" for n in block + cross}
        names = [t.name for t in self.g["tensors"]]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(set(names), expected)
        # whisper.cpp's count: 10 + 15 + 15*n_audio_layer + 24*n_text_layer is an upper bound
        self.assertEqual(len(names), 5 + 15 * 2 + 2 + 4 + 24 * 1)

    def test_types_and_reversed_dims(self):
        t = self.t
        d = self.D
        self.assertEqual((t["encoder.conv1.weight"].shape, t["encoder.conv1.weight"].ttype), ((d, 80, 3), 1))
        self.assertEqual((t["encoder.conv1.bias"].shape, t["encoder.conv1.bias"].ttype), ((d, 1), 0))
        self.assertEqual((t["encoder.positional_embedding"].shape, t["encoder.positional_embedding"].ttype), ((12, d), 0))
        self.assertEqual((t["decoder.positional_embedding"].shape, t["decoder.positional_embedding"].ttype), ((8, d), 0))
        self.assertEqual(t["decoder.token_embedding.weight"].ttype, 1)
        self.assertEqual(t["encoder.blocks.0.mlp.0.weight"].shape, (4 * d, d))
        for tensor in self.g["tensors"]:
            if len(tensor.shape) == 1:
                self.assertEqual(tensor.ttype, 0, tensor.name)
        # raw header of conv1.weight: n_dims 3, ne = [3, 80, d] (innermost first)
        raw = self.out.read_bytes()
        name = b"encoder.conv1.weight"
        pos = raw.index(name)
        n_dims, name_len, ttype, ne0, ne1, ne2 = struct.unpack_from("<6i", raw, pos - 24)
        self.assertEqual((n_dims, name_len, ttype, ne0, ne1, ne2), (3, len(name), 1, 3, 80, d))
        pos = raw.index(b"encoder.conv1.bias")
        self.assertEqual(struct.unpack_from("<5i", raw, pos - 20), (2, 18, 0, 1, d))

    def test_bytes_equal(self):
        t = self.t
        self.assertEqual(t["encoder.conv1.weight"].data, self.src_bytes("encoder/conv1/weight"))
        self.assertEqual(t["decoder.token_embedding.weight"].data, self.src_bytes("decoder/embeddings/weight"))
        self.assertEqual(t["encoder.blocks.1.mlp.2.weight"].data, self.src_bytes("encoder/layer_1/ffn/linear_1/weight"))
        self.assertEqual(t["decoder.blocks.0.cross_attn.out.weight"].data,
                         self.src_bytes("decoder/layer_0/attention/linear_2/weight"))
        # f16 -> f32 conversions are exact
        self.assertEqual(t["encoder.ln_post.weight"].data, self.src_f32("encoder/layer_norm/gamma"))
        self.assertEqual(t["decoder.blocks.0.mlp_ln.bias"].data, self.src_f32("decoder/layer_0/ffn/layer_norm/beta"))
        self.assertEqual(t["encoder.conv2.bias"].data, self.src_f32("encoder/conv2/bias"))
        self.assertEqual(t["encoder.positional_embedding"].data, self.src_f32("encoder/position_encodings/encodings"))

    def test_fused_qkv_split(self):
        d = self.D
        for side, n_layer in (("encoder", 2), ("decoder", 1)):
            for i in range(n_layer):
                w = self.src_bytes(f"{side}/layer_{i}/self_attention/linear_0/weight")
                b = self.src_f32(f"{side}/layer_{i}/self_attention/linear_0/bias")
                row = d * d * 2  # one d x d f16 block
                pre = f"{side}.blocks.{i}.attn"
                self.assertEqual(self.t[f"{pre}.query.weight"].data, w[:row])
                self.assertEqual(self.t[f"{pre}.key.weight"].data, w[row:2 * row])
                self.assertEqual(self.t[f"{pre}.value.weight"].data, w[2 * row:])
                self.assertEqual(self.t[f"{pre}.query.bias"].data, b[:4 * d])
                self.assertEqual(self.t[f"{pre}.value.bias"].data, b[8 * d:])
                self.assertNotIn(f"{pre}.key.bias", self.t)
                self.assertEqual(self.t[f"{pre}.query.weight"].shape, (d, d))

    def test_fused_cross_kv_split(self):
        d = self.D
        w = self.src_bytes("decoder/layer_0/attention/linear_1/weight")
        b = self.src_f32("decoder/layer_0/attention/linear_1/bias")
        row = d * d * 2
        pre = "decoder.blocks.0.cross_attn"
        self.assertEqual(self.t[f"{pre}.query.weight"].data, self.src_bytes("decoder/layer_0/attention/linear_0/weight"))
        self.assertEqual(self.t[f"{pre}.key.weight"].data, w[:row])
        self.assertEqual(self.t[f"{pre}.value.weight"].data, w[row:])
        self.assertEqual(self.t[f"{pre}.value.bias"].data, b[4 * d:])
        self.assertNotIn(f"{pre}.key.bias", self.t)

    def test_deterministic(self):
        out2 = self.tmp / "again.bin"
        conv.convert(self.ct2_dir, out2)
        self.assertEqual(out2.read_bytes(), self.out.read_bytes())

    def test_cli(self):
        out = self.tmp / "cli.bin"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = conv.main([str(self.ct2_dir), str(out)])
        self.assertEqual(rc, 0, err.getvalue())
        self.assertEqual(out.read_bytes(), self.out.read_bytes())
        self.assertIn("sha256", err.getvalue())

    def test_q8_0_file(self):
        out = self.tmp / "q8.bin"
        conv.convert(self.ct2_dir, out, quant="q8_0")
        g = conv.read_ggml(out)
        self.assertEqual(g["ftype"], 2007)  # GGML_QNT_VERSION 2 * 1000 + GGML_FTYPE_MOSTLY_Q8_0
        t = {x.name: x for x in g["tensors"]}
        self.assertEqual(t["encoder.blocks.0.attn.query.weight"].ttype, 8)
        self.assertEqual(len(t["encoder.blocks.0.attn.query.weight"].data), self.D * self.D // 32 * 34)
        self.assertEqual(t["decoder.token_embedding.weight"].ttype, 8)
        self.assertEqual(t["encoder.conv1.weight"].ttype, 1)  # 3-D: stays f16
        self.assertEqual(t["encoder.positional_embedding"].ttype, 0)
        self.assertEqual(t["encoder.blocks.0.attn.query.bias"].ttype, 0)


class Q8Test(unittest.TestCase):
    def test_block_rounding_matches_ggml_reference(self):
        # amax 127 -> d = 1, id = 1: roundf() rounds halves away from zero
        vals = [127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 0.25] + [0.0] * 24
        out = conv.quantize_q8_0(struct.pack("<32e", *vals))
        self.assertEqual(len(out), 34)
        self.assertEqual(struct.unpack("<e", out[:2])[0], 1.0)
        qs = struct.unpack("<32b", out[2:])
        self.assertEqual(qs[:8], (127, 3, -3, 1, -1, 2, -2, 0))

    def test_zero_block_and_scale(self):
        out = conv.quantize_q8_0(b"\0" * 64 + struct.pack("<32e", *([-0.5] + [0.25] * 31)))
        self.assertEqual(out[:34], b"\0" * 34)
        d = struct.unpack("<e", out[34:36])[0]
        self.assertAlmostEqual(d, 0.5 / 127, places=6)
        qs = struct.unpack("<32b", out[36:])
        self.assertEqual(qs[0], -127)
        self.assertEqual(set(qs[1:]), {64})  # 0.25 * 254 = 63.5 -> 64


class MelTest(unittest.TestCase):
    # Reference values from librosa 0.11.0 (numpy 2.4.6), obtained once in a
    # throwaway venv with:
    #   m = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)   # float32
    #   repr(float(m[i, j])); float(m.astype(float64).sum()); (m > 0).sum()
    LIBROSA_80 = {
        (0, 1): 0.02486259490251541,
        (1, 1): 0.001990821911022067,
        (1, 2): 0.022871771827340126,
        (2, 3): 0.02088095061480999,
        (30, 30): 0.00896277092397213,
        (40, 43): 0.014735566452145576,
        (60, 89): 0.0,
        (79, 186): 0.000366741674952209,
        (79, 190): 0.0022320549469441175,
        (79, 199): 0.0004487590049393475,
    }
    LIBROSA_80_SUM = 1.999024092387117
    LIBROSA_80_SUMSQ = 0.0211855153073172
    LIBROSA_80_NONZERO = 391
    # and n_mels=128 (large-v3): m[0, 1], m[127, 199], m[64, 42], m[64, 43]
    LIBROSA_128 = {(0, 1): 0.012373986653983593, (127, 199): 0.0011142801959067583,
                   (64, 42): 0.0067496825940907, (64, 43): 0.018091518431901932}

    @classmethod
    def setUpClass(cls):
        cls.bank = conv.slaney_mel_filters(16000, 400, 80)

    def test_shape(self):
        self.assertEqual(len(self.bank), 80)
        self.assertTrue(all(len(row) == 201 for row in self.bank))

    def test_librosa_values(self):
        for (i, j), ref in self.LIBROSA_80.items():
            self.assertAlmostEqual(self.bank[i][j], ref, delta=1e-6, msg=f"[{i},{j}]")
        flat = [v for row in self.bank for v in row]
        self.assertAlmostEqual(math.fsum(flat), self.LIBROSA_80_SUM, delta=1e-6)
        self.assertAlmostEqual(math.fsum(v * v for v in flat), self.LIBROSA_80_SUMSQ, delta=1e-9)
        self.assertEqual(sum(v > 0 for v in flat), self.LIBROSA_80_NONZERO)
        # nonzero support of a few filters
        support = {i: [j for j, v in enumerate(self.bank[i]) if v > 0] for i in (0, 1, 40, 79)}
        self.assertEqual(support[0], [1])
        self.assertEqual(support[1], [1, 2])
        self.assertEqual(support[40], [42, 43, 44])
        self.assertEqual(support[79], list(range(186, 200)))

    def test_librosa_values_128(self):
        bank = conv.slaney_mel_filters(16000, 400, 128)
        self.assertEqual((len(bank), len(bank[0])), (128, 201))
        for (i, j), ref in self.LIBROSA_128.items():
            self.assertAlmostEqual(bank[i][j], ref, delta=1e-6, msg=f"[{i},{j}]")

    def test_float32_exact(self):
        for row in self.bank:
            packed = struct.pack("<201f", *row)
            self.assertEqual(list(struct.unpack("<201f", packed)), row)

    def test_slaney_area_normalisation(self):
        # Slaney norm scales each triangle to unit area in Hz: the Riemann sum
        # over the 40 Hz FFT bins is ~1 (coarse for the narrow low filters,
        # within 1% once a filter spans >= 8 bins).
        bin_hz = 16000 / 400
        for i, row in enumerate(self.bank):
            area = math.fsum(row) * bin_hz
            width = sum(v > 0 for v in row)
            self.assertTrue(0.9 < area < 1.1, f"filter {i}: area {area}")
            if width >= 8:
                self.assertAlmostEqual(area, 1.0, delta=0.01, msg=f"filter {i}")
        # and the peak never exceeds the triangle's height 2 / (f[i+2] - f[i])
        mel_max = conv._hz_to_mel(8000.0)
        edges = [conv._mel_to_hz(mel_max * k / 81) for k in range(82)]
        for i, row in enumerate(self.bank):
            self.assertLessEqual(max(row), 2.0 / (edges[i + 2] - edges[i]) * (1 + 1e-6))

    def test_mel_scale_roundtrip(self):
        for hz in (0.0, 500.0, 1000.0, 4321.0, 8000.0):
            self.assertAlmostEqual(conv._mel_to_hz(conv._hz_to_mel(hz)), hz, places=6)
        self.assertAlmostEqual(conv._hz_to_mel(1000.0), 15.0)


class VocabTest(TmpDirCase):
    def test_table_is_a_bijection(self):
        table = conv.bytes_to_unicode()
        self.assertEqual(sorted(table), list(range(256)))
        self.assertEqual(len(set(table.values())), 256)
        self.assertEqual(table[ord("A")], "A")
        self.assertEqual(table[ord(" ")], "Ġ")
        self.assertEqual(table[ord("\n")], "Ċ")

    def test_decode(self):
        self.assertEqual(conv.decode_byte_level("Ġhello"), b" hello")
        self.assertEqual(conv.decode_byte_level("hello"), b"hello")
        self.assertEqual(conv.decode_byte_level("ĊĊ"), b"\n\n")
        # 'é' is UTF-8 c3 a9, which byte-level BPE spells 'Ã©'
        self.assertEqual(conv.decode_byte_level("Ã©"), "é".encode("utf-8"))
        self.assertEqual(conv.decode_byte_level("ĠÃ©t"), " ét".encode("utf-8"))
        # a token may hold only part of a UTF-8 sequence: raw bytes, not text
        self.assertEqual(conv.decode_byte_level("ã"), b"\xe3")
        self.assertEqual(conv.decode_byte_level("ãģ"), b"\xe3\x81")

    def test_decode_rejects_foreign_characters(self):
        with self.assertRaises(ValueError):
            conv.decode_byte_level("<|endoftext|>\u4e00")

    def test_vocabulary_split_on_newline_only(self):
        # U+0085 / U+2028 would be line breaks for str.splitlines()
        (self.tmp / "vocabulary.txt").write_text("a\u0085b\nc\u2028d\n", encoding="utf-8")
        self.assertEqual(conv.load_vocabulary(self.tmp), ["a\u0085b", "c\u2028d"])

    def test_vocabulary_json(self):
        (self.tmp / "vocabulary.json").write_text('["Ġa", "b"]', encoding="utf-8")
        self.assertEqual(conv.load_vocabulary(self.tmp), ["Ġa", "b"])

    def test_eot_position_checked(self):
        toks = fixtures.vocabulary()
        toks.insert(5, toks.pop(50256))  # move <|endoftext|>
        with self.assertRaisesRegex(conv.ConversionError, "<\\|endoftext\\|> has id 5"):
            conv.ggml_vocab(toks, len(toks), self.tmp)


class ErrorTest(TmpDirCase):
    def setUp(self):
        super().setUp()
        self.vars = fixtures.tiny_whisper_vars(d=32, heads=1, n_vocab=fixtures.N_VOCAB_EN)
        self.ct2 = self.tmp / "ct2"
        fixtures.write_tiny_model(self.ct2, variables=self.vars)
        self.model_bin = self.ct2 / "model.bin"
        self.good = self.model_bin.read_bytes()

    def assert_fails(self, pattern):
        with self.assertRaises(conv.ConversionError) as cm:
            conv.convert(self.ct2, self.tmp / "out.bin")
        self.assertRegex(str(cm.exception), pattern)
        self.assertFalse((self.tmp / "out.bin").exists())
        return str(cm.exception)

    def test_truncated(self):
        for cut in (2, 10, len(self.good) // 2, len(self.good) - 1):
            self.model_bin.write_bytes(self.good[:cut])
            msg = self.assert_fails("truncated file")
            self.assertIn(str(self.model_bin), msg)

    def test_empty(self):
        self.model_bin.write_bytes(b"")
        self.assert_fails("truncated file")

    def test_wrong_version(self):
        for version in (3, 7, 0x67676D6C):
            self.model_bin.write_bytes(struct.pack("<I", version) + self.good[4:])
            self.assert_fails(r"model\.bin: not a supported CTranslate2 model: binary version %d" % version)

    def test_ggml_file_is_not_ct2(self):
        self.model_bin.write_bytes(b"lmgg" + self.good[4:])
        self.assert_fails("binary version")

    def test_wrong_spec(self):
        self.model_bin.write_bytes(fixtures.ct2_bytes(self.vars, fixtures.ALIASES, spec="TransformerSpec"))
        self.assert_fails("spec is 'TransformerSpec'")

    def test_trailing_garbage(self):
        self.model_bin.write_bytes(self.good + b"xx")
        self.assert_fails("2 unexpected trailing bytes")

    def test_byte_count_mismatch(self):
        name, shape, dtype, data = self.vars[0]
        bad = [(name, shape, dtype, data + b"\0\0")] + self.vars[1:]
        self.model_bin.write_bytes(fixtures.ct2_bytes(bad, fixtures.ALIASES))
        self.assert_fails(f"variable '{name}' shape .* needs {len(data)} bytes")

    def test_missing_variable(self):
        bad = [v for v in self.vars if v[0] != "decoder/layer_0/attention/linear_2/weight"]
        self.model_bin.write_bytes(fixtures.ct2_bytes(bad, fixtures.ALIASES))
        self.assert_fails("missing variable 'decoder/layer_0/attention/linear_2/weight'")

    def test_quantized_ct2_rejected(self):
        bad = [(n, s, 1, data[: len(data) // 2]) if n == "encoder/layer_0/ffn/linear_0/weight" else (n, s, dt, data)
               for n, s, dt, data in self.vars]
        self.model_bin.write_bytes(fixtures.ct2_bytes(bad, fixtures.ALIASES))
        self.assert_fails("dtype int8 .*quantized CTranslate2 models are not supported")

    def test_missing_dir_and_vocab(self):
        with self.assertRaisesRegex(conv.ConversionError, "not a directory"):
            conv.convert(self.tmp / "nope", self.tmp / "out.bin")
        (self.ct2 / "vocabulary.txt").unlink()
        self.assert_fails("no vocabulary.txt")

    def test_cli_exit_code_and_message(self):
        self.model_bin.write_bytes(self.good[:100])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = conv.main(["-q", str(self.ct2), str(self.tmp / "out.bin")])
        self.assertEqual(rc, 1)
        self.assertRegex(err.getvalue(), r"^error: .*model\.bin: truncated file")


if __name__ == "__main__":
    unittest.main()
