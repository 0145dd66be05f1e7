# SPDX-License-Identifier: MIT OR Apache-2.0
"""Cases for convert_moonshine_ort.py that need onnx/onnxruntime/numpy.

Not collected by ``unittest discover`` (no ``test_`` prefix): test_convert_moonshine.py runs this
file with the converter's pinned virtual environment's python. Tiny synthetic models only: built
with onnx.helper, saved in ORT format by ONNX Runtime itself, converted back and run.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import convert_moonshine_ort as conv  # noqa: E402

OPSET = [helper.make_opsetid("", 14)]


def save_ort(model, path: Path) -> None:
    """Let ONNX Runtime write `model` in ORT format, unoptimised (Cast/Mul chains stay)."""
    onnx_path = path.with_suffix(".src.onnx")
    onnx.save_model(model, str(onnx_path))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.optimized_model_filepath = str(path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    assert path.read_bytes()[4:8] == b"ORTM"


def run(path, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def int8_weight(name, rows, cols, seed):
    """An int8 initializer dequantised by Cast, Mul(scale), Add(offset), like base-en's weights."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
    inits = [numpy_helper.from_array(q, f"{name}_quantized"),
             numpy_helper.from_array(np.array(0.0123, np.float32), f"{name}_scale"),
             numpy_helper.from_array(np.array(-0.05, np.float32), f"{name}_offset")]
    nodes = [helper.make_node("Cast", [f"{name}_quantized"], [f"{name}_cast"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{name}_cast", f"{name}_scale"], [f"{name}_mul"]),
             helper.make_node("Add", [f"{name}_mul", f"{name}_offset"], [name])]
    return inits, nodes


def plain_model():
    """Many dtypes and attribute kinds, a symbolic input shape, a folded weight."""
    inits, nodes = int8_weight("w", 8, 6, 1)
    inits += [
        numpy_helper.from_array(np.arange(6, dtype=np.float16).reshape(1, 6) / 8, "bias16"),
        numpy_helper.from_array(np.array([1, 6], np.int64), "shape"),
        numpy_helper.from_array(np.array([True, False, True, True, False, True]), "mask"),
        numpy_helper.from_array(np.array([2.5], np.float64), "dbl"),
        numpy_helper.from_array(np.array([1, 2, 3], np.uint8), "unused_u8"),
    ]
    nodes += [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Cast", ["bias16"], ["bias"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["mm", "bias"], ["biased"]),
        helper.make_node("LeakyRelu", ["biased"], ["act"], alpha=0.3),
        helper.make_node("Transpose", ["act"], ["act_t"], perm=[1, 0]),
        helper.make_node("Transpose", ["act_t"], ["act2"], perm=[1, 0]),
        helper.make_node("Where", ["mask", "act2", "act"], ["sel"]),
        helper.make_node("Cast", ["dbl"], ["dbl_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sel", "dbl_f"], ["y"], name="scale_out"),
        helper.make_node("ArgMax", ["y"], ["idx"], axis=-1, keepdims=0),
    ]
    g = helper.make_graph(
        nodes, "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        inits)
    m = helper.make_model(g, opset_imports=OPSET, producer_name="unit-test")
    m.ir_version = 8
    return m


def merged_decoder(d=8, vocab=10):
    """A miniature optimum-style merged decoder: If(use_cache_branch) over outer-scope weights."""
    inits, nodes = [], []
    for name, seed in (("wq", 2), ("wk", 3), ("wv", 4), ("wo", 5)):
        i, n = int8_weight(name, d, d if name != "wo" else vocab, seed)
        inits += i
        nodes += n
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    f = TensorProto.FLOAT

    def tv(name, shape, typ=f):
        return helper.make_tensor_value_info(name, typ, shape)

    outs = ["logits", "present.0.decoder.key", "present.0.encoder.key"]
    # first step: encoder cache from encoder_hidden_states
    e_nodes = [
        helper.make_node("Gather", ["emb_table_e", "input_ids"], ["e_h"], axis=0),
        helper.make_node("MatMul", ["e_h", "wq"], ["e_dk"]),
        helper.make_node("Identity", ["e_dk"], ["e_present_dec"]),
        helper.make_node("MatMul", ["encoder_hidden_states", "wk"], ["e_present_enc"]),
        helper.make_node("ReduceMean", ["e_present_enc"], ["e_ctx"], axes=[1], keepdims=1),
        helper.make_node("Add", ["e_dk", "e_ctx"], ["e_sum"]),
        helper.make_node("MatMul", ["e_sum", "wo"], ["e_logits"]),
    ]
    emb = numpy_helper.from_array(np.random.default_rng(9).standard_normal((vocab, d)).astype(np.float32),
                                  "emb_table_e")
    else_g = helper.make_graph(e_nodes, "else", [], [tv("e_logits", None), tv("e_present_dec", None),
                                                     tv("e_present_enc", None)], [emb])
    else_g.output[0].name, else_g.output[1].name, else_g.output[2].name = "e_logits", "e_present_dec", "e_present_enc"
    emb_t = numpy_helper.from_array(numpy_helper.to_array(emb), "emb_table_t")
    t_nodes = [
        helper.make_node("Gather", ["emb_table_t", "input_ids"], ["t_h"], axis=0),
        helper.make_node("MatMul", ["t_h", "wv"], ["t_dk"]),
        helper.make_node("Concat", ["past_key_values.0.decoder.key", "t_dk"], ["t_present_dec"], axis=1),
        helper.make_node("ReduceMean", ["past_key_values.0.encoder.key"], ["t_ctx"], axes=[1], keepdims=1),
        helper.make_node("ReduceMean", ["t_present_dec"], ["t_self"], axes=[1], keepdims=1),
        helper.make_node("Add", ["t_ctx", "t_self"], ["t_sum"]),
        helper.make_node("MatMul", ["t_sum", "wo"], ["t_logits"]),
        helper.make_node("Identity", ["past_key_values.0.encoder.key"], ["t_present_enc"]),
    ]
    # the with-past branch hands the encoder cache through unchanged, as optimum's does
    then_g = helper.make_graph(t_nodes, "then", [], [tv("t_logits", None), tv("t_present_dec", None),
                                                     tv("t_present_enc", None)], [emb_t])
    nodes.append(helper.make_node("If", ["use_cache_branch"], outs, name="optimum::if",
                                  then_branch=then_g, else_branch=else_g))
    g = helper.make_graph(
        nodes, "merged",
        [tv("input_ids", ["batch_size", "decoder_sequence_length"], TensorProto.INT64),
         tv("encoder_hidden_states", ["batch_size", "encoder_sequence_length", d]),
         tv("past_key_values.0.decoder.key", ["batch_size", "past_decoder_sequence_length", d]),
         tv("past_key_values.0.encoder.key", ["batch_size", "encoder_sequence_length_out", d]),
         tv("use_cache_branch", [1], TensorProto.BOOL)],
        [tv("logits", ["batch_size", "decoder_sequence_length", vocab]),
         tv("present.0.decoder.key", ["batch_size", "past_decoder_sequence_length + 1", d]),
         tv("present.0.encoder.key", ["batch_size", "encoder_sequence_length_out", d])],
        inits)
    m = helper.make_model(g, opset_imports=OPSET, producer_name="optimum-onnx")
    m.ir_version = 8
    return m


class Base(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()


class PlainModelTest(Base):
    def setUp(self):
        super().setUp()
        self.src = plain_model()
        self.ort_path = self.tmp / "m.ort"
        save_ort(self.src, self.ort_path)
        self.x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)

    def test_round_trip_same_outputs(self):
        out = self.tmp / "m.onnx"
        conv.convert(self.ort_path, out)
        want = run(self.ort_path, {"x": self.x})
        got = run(out, {"x": self.x})
        np.testing.assert_array_equal(got["idx"], want["idx"])
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6, atol=1e-6)

    def test_structure(self):
        m = conv.ort_to_onnx(self.ort_path.read_bytes())
        onnx.checker.check_model(m)
        self.assertEqual(m.ir_version, 8)
        self.assertEqual(m.producer_name, "unit-test")
        self.assertEqual([(o.domain, o.version) for o in m.opset_import], [("", 14)])
        self.assertEqual([n.op_type for n in m.graph.node], [n.op_type for n in self.src.graph.node])
        # every dtype's bytes survive (ONNX Runtime itself drops unused initializers when saving)
        src = {t.name: (t.data_type, list(t.dims), numpy_helper.from_array(numpy_helper.to_array(t)).raw_data)
               for t in self.src.graph.initializer if t.name not in ("shape", "unused_u8")}
        self.assertEqual({t.name: (t.data_type, list(t.dims), t.raw_data) for t in m.graph.initializer}, src)
        self.assertEqual({t.data_type for t in m.graph.initializer},
                         {TensorProto.INT8, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.DOUBLE})
        attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in m.graph.node}
        # the attributes come back (ONNX Runtime adds defaults, e.g. ArgMax's select_last_index)
        got = collections.Counter(str(a) for n in m.graph.node for a in n.attribute)
        want = collections.Counter(str(a) for n in self.src.graph.node for a in n.attribute)
        self.assertEqual(want - got, collections.Counter())
        self.assertEqual(attrs["matmul"], {})
        x, = m.graph.input
        self.assertEqual([d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim], ["batch", 8])
        self.assertEqual([o.name for o in m.graph.output], ["y", "idx"])
        self.assertEqual(m.graph.output[1].type.tensor_type.elem_type, TensorProto.INT64)

    def test_folding(self):
        out = self.tmp / "m.onnx"
        conv.convert(self.ort_path, out)
        m = onnx.load(str(out))
        ops = [n.op_type for n in m.graph.node]
        self.assertNotIn("Cast", ops)  # int8 weight, f16 bias and f64 scalar all folded
        self.assertEqual(ops.count("Transpose"), 2)  # not constant: kept
        names = {t.name for t in m.graph.initializer}
        self.assertIn("w", names)
        self.assertNotIn("w_quantized", names)
        self.assertNotIn("unused_u8", names)
        w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w"))
        q = numpy_helper.to_array(next(t for t in self.src.graph.initializer if t.name == "w_quantized"))
        np.testing.assert_array_equal(w, q.astype(np.float32) * np.float32(0.0123) + np.float32(-0.05))

    def test_int8_deterministic_and_close(self):
        a, b = self.tmp / "a.onnx", self.tmp / "b.onnx"
        conv.convert(self.ort_path, a, quantize="int8")
        conv.convert(self.ort_path, b, quantize="int8")
        self.assertEqual(a.read_bytes(), b.read_bytes())
        ops = {n.op_type for n in onnx.load(str(a)).graph.node}
        self.assertIn("MatMulInteger", ops)
        self.assertIn("DynamicQuantizeLinear", ops)
        want = run(self.ort_path, {"x": self.x})["y"]
        got = run(a, {"x": self.x})["y"]
        self.assertLess(np.abs(got - want).max(), 0.05 * np.abs(want).max())

    def test_cli(self):
        out = self.tmp / "sub" / "cli.onnx"
        rc = conv.main([str(self.ort_path), str(out), "--quantize", "none", "--no-bootstrap"])
        self.assertEqual(rc, 0)
        self.assertTrue(out.is_file())

    def test_not_ort(self):
        bad = self.tmp / "bad.ort"
        bad.write_bytes(self.src.SerializeToString())
        with self.assertRaises(conv.ConvertError):
            conv.convert(bad, self.tmp / "x.onnx")
        self.assertEqual(conv.main([str(bad), str(self.tmp / "x.onnx"), "--no-bootstrap"]), 1)
        self.assertFalse((self.tmp / "x.onnx").exists())


class MergedDecoderTest(Base):
    def setUp(self):
        super().setUp()
        self.ort_path = self.tmp / "decoder_model_merged.ort"
        save_ort(merged_decoder(), self.ort_path)
        rng = np.random.default_rng(1)
        self.ids = np.array([[3]], np.int64)
        self.enc = rng.standard_normal((1, 5, 8)).astype(np.float32)
        self.past_dec = rng.standard_normal((1, 2, 8)).astype(np.float32)
        self.past_enc = rng.standard_normal((1, 5, 8)).astype(np.float32)

    def merged_feeds(self, use_cache):
        return {"input_ids": self.ids, "encoder_hidden_states": self.enc,
                "past_key_values.0.decoder.key": self.past_dec if use_cache else np.zeros((1, 0, 8), np.float32),
                "past_key_values.0.encoder.key": self.past_enc,
                "use_cache_branch": np.array([use_cache])}

    def test_merged_round_trip(self):
        out = self.tmp / "merged.onnx"
        conv.convert(self.ort_path, out)
        m = onnx.load(str(out))
        self.assertEqual([n.op_type for n in m.graph.node], ["If"])  # the weights were folded
        for use_cache in (False, True):
            want = run(self.ort_path, self.merged_feeds(use_cache))
            got = run(out, self.merged_feeds(use_cache))
            self.assertEqual(list(got), list(want))
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)

    def test_first_step(self):
        out = self.tmp / "decoder_model.onnx"
        conv.convert(self.ort_path, out, part="decoder")
        m = onnx.load(str(out))
        self.assertEqual([i.name for i in m.graph.input], ["input_ids", "encoder_hidden_states"])
        self.assertEqual([o.name for o in m.graph.output],
                         ["logits", "present.0.decoder.key", "present.0.encoder.key"])
        dims = [d.dim_param for d in m.graph.output[1].type.tensor_type.shape.dim]
        self.assertEqual(dims[1], "decoder_sequence_length")
        self.assertNotIn("If", {n.op_type for n in m.graph.node})
        want = run(self.ort_path, self.merged_feeds(False))
        got = run(out, {"input_ids": self.ids, "encoder_hidden_states": self.enc})
        for k in got:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)

    def test_with_past(self):
        out = self.tmp / "decoder_with_past_model.onnx"
        conv.convert(self.ort_path, out, part="decoder-with-past")
        m = onnx.load(str(out))
        # encoder_hidden_states is not used by this branch; the unchanged encoder cache is not returned
        self.assertEqual([i.name for i in m.graph.input],
                         ["input_ids", "past_key_values.0.decoder.key", "past_key_values.0.encoder.key"])
        self.assertEqual([o.name for o in m.graph.output], ["logits", "present.0.decoder.key"])
        self.assertNotIn("emb_table_e", {t.name for t in m.graph.initializer})
        want = run(self.ort_path, self.merged_feeds(True))
        got = run(out, {"input_ids": self.ids, "past_key_values.0.decoder.key": self.past_dec,
                        "past_key_values.0.encoder.key": self.past_enc})
        self.assertEqual(got["present.0.decoder.key"].shape, (1, 3, 8))
        for k in got:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)

    def test_split_int8_deterministic(self):
        a, b = self.tmp / "a.onnx", self.tmp / "b.onnx"
        conv.convert(self.ort_path, a, part="decoder-with-past", quantize="int8")
        conv.convert(self.ort_path, b, part="decoder-with-past", quantize="int8")
        self.assertEqual(a.read_bytes(), b.read_bytes())

    def test_split_needs_merged_decoder(self):
        plain = self.tmp / "plain.ort"
        save_ort(plain_model(), plain)
        with self.assertRaises(conv.ConvertError):
            conv.convert(plain, self.tmp / "x.onnx", part="decoder")


class ToposortTest(unittest.TestCase):
    def test_stable_topological_order(self):
        n = [helper.make_node("Relu", ["b"], ["c"], name="2"),
             helper.make_node("Relu", ["a"], ["b"], name="1"),
             helper.make_node("Relu", ["x"], ["y"], name="0"),
             helper.make_node("Add", ["c", "y"], ["z"], name="3")]
        order = conv._toposort([(x, []) for x in n])
        self.assertEqual([x.name for x in order], ["1", "2", "0", "3"])

    def test_implicit_inputs_are_dependencies(self):
        n = [helper.make_node("If", ["cond"], ["out"], name="if"),
             helper.make_node("Relu", ["a"], ["w"], name="w")]
        order = conv._toposort([(n[0], ["w"]), (n[1], [])])
        self.assertEqual([x.name for x in order], ["w", "if"])


if __name__ == "__main__":
    unittest.main()
