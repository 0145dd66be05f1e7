#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Convert an ONNX Runtime ORT-format model (Moonshine's .ort files) to a standard ONNX model.

Usage::

    python3 models/convert_moonshine_ort.py MODEL.ort OUT.onnx [--part PART] [--quantize int8|none]

PART is ``model`` (default: the whole graph, e.g. ``encoder_model.ort`` or the merged decoder as
is), ``decoder`` or ``decoder-with-past``: one branch of a merged decoder (a graph whose only
top-level control flow is an ``If`` on the boolean input ``use_cache_branch``, as Hugging Face
optimum exports them), inlined into a plain graph without ``use_cache_branch``:

* ``decoder`` (the ``else`` branch, first step): inputs ``input_ids``, ``encoder_hidden_states``;
  outputs ``logits`` and every ``present.N.{decoder,encoder}.{key,value}``.
* ``decoder-with-past`` (the ``then`` branch, later steps): inputs ``input_ids`` and every
  ``past_key_values.N.{decoder,encoder}.{key,value}``; outputs ``logits`` and
  ``present.N.decoder.{key,value}`` only (in the merged graph the with-past branch returns the
  encoder cache unchanged; dropping those outputs saves copying it at every step).

Graph inputs that the branch does not use are removed (ONNX Runtime would otherwise demand them).

Steps: (1) read the ORT flatbuffer (the schema classes ship with onnxruntime:
``onnxruntime/tools/ort_format_model/ort_flatbuffers_py``) and rebuild the ONNX graph: nodes
(domain, op type, name, attributes including If/Loop/Scan subgraphs), initializers (raw data of
every dtype, string tensors, sparse initializers), graph inputs/outputs with element types and
symbolic shapes, opset imports (those of the domains that nodes use), producer and metadata;
nodes are put in a stable topological order (an ORT-format file lists them by node index, which
after ORT's fusions need not be topological).  (2) Split the merged decoder if asked.
(3) Fold constant subexpressions over initializers with numpy: Cast, Mul, Add, Sub, Div, Neg,
DequantizeLinear, Transpose, Reshape, (Un)Squeeze, Identity whose inputs are all constants (the
shipped base-en files keep int8 weights that are Cast, scaled and offset at every run; ONNX
Runtime does not constant-fold ORT-format models).  Subgraphs are folded too.  Dead nodes and
unused initializers go.  (4) ``--quantize int8``: ONNX Runtime's dynamic quantisation of the
MatMul weights (``quantize_dynamic``, settings in QUANT_SETTINGS below); at load time ONNX
Runtime (graph optimisation level >= extended) fuses the result into DynamicQuantizeMatMul /
MatMulIntegerToFloat kernels.

The output is deterministic: the same input gives a byte-identical file (numpy float32
arithmetic is IEEE-exact for these ops; names are derived from the input's names).

Dependencies: onnx, onnxruntime, numpy, flatbuffers (+ their dependencies), at the exact
versions in REQUIREMENTS.  provision.py runs converters with the system python3, so this script
bootstraps its own virtual environment, ``$VOICEBOT_CACHE/convert-venv-<hash>`` (default cache
``~/.cache/voicebot``; hash of the pinned requirements and the Python version), with
``python3 -m venv`` and ``pip install --no-deps --only-binary=:all:`` of exactly those versions
(pip's own configuration such as PIP_INDEX_URL applies), and re-executes itself inside it.  The
environment is built in a temporary directory and renamed into place, so an interrupted build
leaves nothing half-made; the first run downloads ~60 MB of wheels, later runs reuse it.
``--no-bootstrap`` runs in the current interpreter instead (it must have exactly the pinned
versions).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Exact pins, dependencies included (installed with --no-deps, so nothing else is resolved).
REQUIREMENTS = (
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "numpy==2.4.6",
    "flatbuffers==25.12.19",
    "protobuf==7.36.2",
    "ml_dtypes==0.7.0",
    "typing_extensions==4.16.0",
    "packaging==26.4",
)

# Dynamic quantisation settings, chosen by measurement on Moonshine base-en (models/README.md):
# uint8 weights (asymmetric, like the int8+offset weights the .ort ships) gave the same transcripts
# as the float model on every test clip and the fastest decoder steps; int8 (symmetric) weights,
# per tensor or per channel, changed words. Gather (the token embedding) is quantised too: 4x
# smaller, no measurable cost.
QUANT_SETTINGS = {
    "op_types": ["MatMul", "Gather"],
    "weight_type": "QUInt8",
    "per_channel": False,
    "reduce_range": False,
}

VENV_MARKER = "voicebot-convert-venv.txt"


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------
# Virtual environment bootstrap (standard library only)
# --------------------------------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("VOICEBOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "voicebot"


def venv_key() -> str:
    """Hash of what the environment contains: the pins and the interpreter's version."""
    impl = sys.implementation.name
    ver = "%d.%d.%d" % sys.version_info[:3]
    text = "\n".join((impl, ver, *REQUIREMENTS)) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def venv_dir() -> Path:
    return cache_dir() / f"convert-venv-{venv_key()}"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_ready(venv: Path) -> bool:
    marker = venv / VENV_MARKER
    try:
        return marker.read_text() == "\n".join(REQUIREMENTS) + "\n" and venv_python(venv).exists()
    except OSError:
        return False


def ensure_venv(log=None) -> Path:
    """Create the pinned environment if it is missing; return its python. Idempotent and safe
    to interrupt or to run concurrently (the environment appears by an atomic rename)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    venv = venv_dir()
    if venv_ready(venv):
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if venv.exists():  # an old layout or a broken copy: replace it
        log(f"convert-venv: {venv} is incomplete, rebuilding it")
        trash = Path(tempfile.mkdtemp(prefix=f".{venv.name}.old.", dir=venv.parent))
        try:
            os.replace(venv, trash / "v")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", suffix=".tmp", dir=venv.parent))
    try:
        log(f"convert-venv: creating {venv} ({', '.join(REQUIREMENTS)})")
        build = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(build)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        py = venv_python(build)
        proc = subprocess.run(
            [str(py), "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-input",
             "--disable-pip-version-check", "--no-cache-dir", "--quiet", *REQUIREMENTS],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = " | ".join(proc.stdout.strip().splitlines()[-5:])
            raise ConvertError(f"pip install into the converter environment failed (exit {proc.returncode}): {tail}")
        (build / VENV_MARKER).write_text("\n".join(REQUIREMENTS) + "\n")
        try:
            os.rename(build, venv)  # a venv finds its prefix from pyvenv.cfg, so it may move
        except OSError:
            if not venv_ready(venv):  # somebody else won the race with a complete one: fine
                raise
    except subprocess.CalledProcessError as e:
        raise ConvertError(f"python3 -m venv failed: {(e.stderr or b'').decode(errors='replace').strip()}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return venv_python(venv)


def in_pinned_env() -> bool:
    try:
        from importlib.metadata import version, PackageNotFoundError
    except ImportError:  # pragma: no cover
        return False
    for req in REQUIREMENTS:
        name, want = req.split("==")
        try:
            if version(name) != want:
                return False
        except PackageNotFoundError:
            return False
    return True


# --------------------------------------------------------------------------
# ORT format -> ONNX (needs onnx, numpy, flatbuffers and onnxruntime's schema classes)
# --------------------------------------------------------------------------


def _fbs():
    import onnxruntime

    d = Path(onnxruntime.__file__).resolve().parent / "tools" / "ort_format_model"
    if str(d) not in sys.path:
        sys.path.append(str(d))  # at the end: that directory has a types.py that shadows the stdlib's
    import ort_flatbuffers_py.fbs.InferenceSession as fis
    import ort_flatbuffers_py.fbs.MapType as fmap
    import ort_flatbuffers_py.fbs.SequenceType as fseq
    import ort_flatbuffers_py.fbs.TensorTypeAndShape as ftt

    return fis.InferenceSession, ftt.TensorTypeAndShape, fseq.SequenceType, fmap.MapType


def _s(b) -> str:
    return b.decode("utf-8") if b is not None else ""


INT64_MAX = (1 << 63) - 1


class OrtReader:
    def __init__(self, buf: bytes):
        (self.InferenceSession, self.TensorTypeAndShape, self.SequenceType,
         self.MapType) = _fbs()
        self.buf = buf
        if len(buf) < 8 or buf[4:8] != b"ORTM":
            raise ConvertError("not an ORT-format model (no ORTM file identifier)")
        self.session = self.InferenceSession.GetRootAs(buf, 0)

    def model(self):
        import onnx

        m = self.session.Model()
        if m is None or m.Graph() is None:
            raise ConvertError("the ORT file holds no model")
        graph = self.graph(m.Graph(), "main_graph", top=True)
        used = set()
        _collect_domains(graph, used)
        opsets = []
        for i in range(m.OpsetImportLength()):
            o = m.OpsetImport(i)
            dom = _s(o.Domain())
            dom = "" if dom == "ai.onnx" else dom
            if dom == "" or dom in used:
                opsets.append(onnx.helper.make_opsetid(dom, o.Version()))
        missing = used - {o.domain for o in opsets}
        if missing:
            raise ConvertError(f"nodes use domains without an opset import: {sorted(missing)}")
        model = onnx.helper.make_model(graph, opset_imports=opsets)
        model.ir_version = m.IrVersion()
        model.producer_name = _s(m.ProducerName())
        model.producer_version = _s(m.ProducerVersion())
        model.domain = _s(m.Domain())
        if m.ModelVersion() not in (INT64_MAX, 0):
            model.model_version = m.ModelVersion()
        model.doc_string = _s(m.DocString())
        if m.GraphDocString():
            model.graph.doc_string = _s(m.GraphDocString())
        for i in range(m.MetadataPropsLength()):
            e = m.MetadataProps(i)
            p = model.metadata_props.add()
            p.key, p.value = _s(e.Key()), _s(e.Value())
        return model

    # -- types --------------------------------------------------------------

    def type_proto(self, t):
        import onnx

        tp = onnx.TypeProto()
        if t is None:
            return None
        if t.Denotation():
            tp.denotation = _s(t.Denotation())
        kind = t.ValueType()
        if kind == 1:  # tensor_type
            tt = self.TensorTypeAndShape()
            tt.Init(t.Value().Bytes, t.Value().Pos)
            tp.tensor_type.elem_type = tt.ElemType()
            shape = tt.Shape()
            if shape is not None:
                tp.tensor_type.shape.SetInParent()
                for d in range(shape.DimLength()):
                    dim = shape.Dim(d)
                    pd = tp.tensor_type.shape.dim.add()
                    if dim.Denotation():
                        pd.denotation = _s(dim.Denotation())
                    v = dim.Value()
                    if v is None:
                        continue
                    if v.DimType() == 1:
                        pd.dim_value = v.DimValue()
                    elif v.DimType() == 2:
                        pd.dim_param = _s(v.DimParam())
        elif kind == 2:  # sequence_type
            st = self.SequenceType()
            st.Init(t.Value().Bytes, t.Value().Pos)
            elem = self.type_proto(st.ElemType())
            tp.sequence_type.SetInParent()
            if elem is not None:
                tp.sequence_type.elem_type.CopyFrom(elem)
        elif kind == 3:  # map_type
            mt = self.MapType()
            mt.Init(t.Value().Bytes, t.Value().Pos)
            tp.map_type.key_type = mt.KeyType()
            val = self.type_proto(mt.ValueType())
            if val is not None:
                tp.map_type.value_type.CopyFrom(val)
        else:
            return None
        return tp

    def value_info(self, name: str, node_args: dict):
        import onnx

        vi = onnx.ValueInfoProto()
        vi.name = name
        arg = node_args.get(name)
        if arg is not None:
            tp = self.type_proto(arg.Type())
            if tp is not None:
                vi.type.CopyFrom(tp)
            if arg.DocString():
                vi.doc_string = _s(arg.DocString())
        return vi

    # -- tensors ------------------------------------------------------------

    def tensor(self, t):
        import onnx

        tp = onnx.TensorProto()
        tp.name = _s(t.Name())
        if t.DocString():
            tp.doc_string = _s(t.DocString())
        tp.dims.extend(t.Dims(i) for i in range(t.DimsLength()))
        tp.data_type = t.DataType()
        if t.ExternalDataOffset() >= 0:
            raise ConvertError(f"initializer {tp.name}: external data is not supported")
        if tp.data_type == onnx.TensorProto.STRING:
            tp.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
        elif not t.RawDataIsNone():
            tp.raw_data = t.RawDataAsNumpy().tobytes()
        return tp

    def sparse_tensor(self, st):
        import onnx

        sp = onnx.SparseTensorProto()
        sp.values.CopyFrom(self.tensor(st.Values()))
        sp.indices.CopyFrom(self.tensor(st.Indices()))
        sp.dims.extend(st.Dims(i) for i in range(st.DimsLength()))
        return sp

    # -- nodes and graphs -----------------------------------------------------

    def attribute(self, a):
        import onnx

        ap = onnx.AttributeProto()
        ap.name = _s(a.Name())
        if a.DocString():
            ap.doc_string = _s(a.DocString())
        typ = a.Type()
        ap.type = typ
        A = onnx.AttributeProto
        if typ == A.FLOAT:
            ap.f = a.F()
        elif typ == A.INT:
            ap.i = a.I()
        elif typ == A.STRING:
            ap.s = a.S() or b""
        elif typ == A.TENSOR:
            ap.t.CopyFrom(self.tensor(a.T()))
        elif typ == A.GRAPH:
            ap.g.CopyFrom(self.graph(a.G(), ap.name))
        elif typ == A.FLOATS:
            ap.floats.extend(float(x) for x in a.FloatsAsNumpy()) if a.FloatsLength() else None
        elif typ == A.INTS:
            ap.ints.extend(int(x) for x in a.IntsAsNumpy()) if a.IntsLength() else None
        elif typ == A.STRINGS:
            ap.strings.extend(a.Strings(i) for i in range(a.StringsLength()))
        elif typ == A.TENSORS:
            ap.tensors.extend(self.tensor(a.Tensors(i)) for i in range(a.TensorsLength()))
        elif typ == A.GRAPHS:
            ap.graphs.extend(self.graph(a.Graphs(i), f"{ap.name}_{i}") for i in range(a.GraphsLength()))
        else:
            raise ConvertError(f"attribute {ap.name}: unsupported attribute type {typ}")
        return ap

    def graph(self, g, name: str, top: bool = False):
        import onnx

        node_args = {}
        for i in range(g.NodeArgsLength()):
            v = g.NodeArgs(i)
            node_args[_s(v.Name())] = v
        gp = onnx.GraphProto()
        gp.name = name
        for i in range(g.InitializersLength()):
            gp.initializer.append(self.tensor(g.Initializers(i)))
        for i in range(g.SparseInitializersLength()):
            gp.sparse_initializer.append(self.sparse_tensor(g.SparseInitializers(i)))
        for i in range(g.InputsLength()):
            gp.input.append(self.value_info(_s(g.Inputs(i)), node_args))
        for i in range(g.OutputsLength()):
            gp.output.append(self.value_info(_s(g.Outputs(i)), node_args))
        nodes = []
        for i in range(g.NodesLength()):
            n = g.Nodes(i)
            if n.Type() != 0:
                raise ConvertError(f"node {_s(n.Name())}: fused (compiled) nodes cannot be converted")
            np_ = onnx.NodeProto()
            np_.op_type = _s(n.OpType())
            dom = _s(n.Domain())
            np_.domain = "" if dom == "ai.onnx" else dom
            np_.name = _s(n.Name())
            if n.DocString():
                np_.doc_string = _s(n.DocString())
            np_.input.extend(_s(n.Inputs(j)) for j in range(n.InputsLength()))
            np_.output.extend(_s(n.Outputs(j)) for j in range(n.OutputsLength()))
            np_.attribute.extend(self.attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
            implicit = [_s(n.ImplicitInputs(j)) for j in range(n.ImplicitInputsLength())]
            nodes.append((n.Index(), np_, implicit))
        nodes.sort(key=lambda t: t[0])
        gp.node.extend(_toposort([(np_, implicit) for _, np_, implicit in nodes]))
        return gp


def _collect_domains(graph, used: set) -> None:
    for n in graph.node:
        if n.domain:
            used.add(n.domain)
        for a in n.attribute:
            for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _collect_domains(sg, used)


def _subgraph_inputs(node) -> list:
    """Names a node reads from the enclosing scope through its subgraphs."""
    out = []
    for a in node.attribute:
        for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            out.extend(_outer_names(sg))
    return out


def _outer_names(graph) -> list:
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {s.values.name for s in graph.sparse_initializer}
    for n in graph.node:
        local.update(n.output)
    names = []
    for n in graph.node:
        for x in list(n.input) + _subgraph_inputs(n):
            if x and x not in local:
                names.append(x)
    names.extend(o.name for o in graph.output if o.name not in local)
    return names


def _toposort(nodes):
    """Stable topological order (Kahn, lowest original position first)."""
    import heapq

    producer = {}
    for i, (n, _) in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
    deps = [set() for _ in nodes]
    users = [[] for _ in nodes]
    for i, (n, implicit) in enumerate(nodes):
        for x in list(n.input) + list(implicit) + _subgraph_inputs(n):
            j = producer.get(x)
            if j is not None and j != i and j not in deps[i]:
                deps[i].add(j)
                users[j].append(i)
    indeg = [len(d) for d in deps]
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i][0])
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ConvertError("the graph has a cycle")
    return order


def ort_to_onnx(buf: bytes):
    return OrtReader(buf).model()


# --------------------------------------------------------------------------
# Merged decoder -> one branch
# --------------------------------------------------------------------------


def split_merged_decoder(model, with_past: bool):
    import onnx

    g = model.graph
    ifs = [n for n in g.node if n.op_type == "If" and n.domain == ""]
    if len(ifs) != 1 or list(ifs[0].input) != ["use_cache_branch"]:
        raise ConvertError("not a merged decoder: expected exactly one If node on 'use_cache_branch'")
    if_node = ifs[0]
    branch = next(a.g for a in if_node.attribute if a.name == ("then_branch" if with_past else "else_branch"))
    if len(branch.output) != len(if_node.output):
        raise ConvertError("If branch and node disagree on the number of outputs")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ng = out.graph
    del ng.node[:]
    rename = {}
    used_outputs = set()
    for bo, no in zip(branch.output, if_node.output):
        rename[bo.name] = no
    branch_inner = {x for n in branch.node for x in n.output}
    outer = {x for n in g.node if n is not if_node for x in n.output} | {t.name for t in g.initializer} | {i.name for i in g.input}
    clash = (branch_inner | {t.name for t in branch.initializer}) & outer
    if clash:
        raise ConvertError(f"branch names shadow outer names: {sorted(clash)[:5]}")

    def fix(name):
        return rename.get(name, name)

    new_nodes = [n for n in g.node if n is not if_node and n.name != if_node.name]
    for n in branch.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.output[:] = [fix(o) for o in c.output]
        c.input[:] = [fix(i) for i in c.input]
        new_nodes.append(c)
    ng.node.extend(new_nodes)
    ng.initializer.extend(branch.initializer)
    # A branch output that is not computed in the branch (it passes an outer value through,
    # e.g. the with-past branch returns past_key_values.N.encoder.* as present.N.encoder.*).
    for bo, no in zip(branch.output, if_node.output):
        if bo.name not in branch_inner and bo.name != no:
            ng.node.append(onnx.helper.make_node("Identity", [bo.name], [no], name=f"{no}_passthrough"))
    keep_out = []
    for o in g.output:
        if with_past and o.name.startswith("present.") and ".encoder." in o.name:
            continue
        keep_out.append(o)
        used_outputs.add(o.name)
    del ng.output[:]
    ng.output.extend(keep_out)
    # Nodes are re-sorted; dead code, unused inputs and initializers are dropped by prune().
    nodes = list(ng.node)
    del ng.node[:]
    ng.node.extend(_toposort([(n, []) for n in nodes]))
    prune(out, drop_inputs=True)
    if not with_past:  # no past here: present.N.decoder.* have the length of input_ids
        for o in out.graph.output:
            for d in o.type.tensor_type.shape.dim:
                if d.dim_param == "past_decoder_sequence_length + 1":
                    d.dim_param = "decoder_sequence_length"
    return out


# --------------------------------------------------------------------------
# Constant folding and pruning
# --------------------------------------------------------------------------

FOLDABLE = {"Cast", "Mul", "Add", "Sub", "Div", "Neg", "DequantizeLinear", "Transpose", "Reshape",
            "Unsqueeze", "Squeeze", "Identity"}


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _eval(node, vals):
    """numpy evaluation of one FOLDABLE node (float32 arithmetic, IEEE-exact per element)."""
    import numpy as np
    import onnx

    op = node.op_type
    at = _attrs(node)
    x = vals
    if op == "Cast":
        return x[0].astype(onnx.helper.tensor_dtype_to_np_dtype(at["to"]))
    if op == "Identity":
        return x[0]
    if op == "Neg":
        return np.negative(x[0])
    if op in ("Mul", "Add", "Sub", "Div"):
        a, b = x
        if a.dtype != b.dtype:
            raise ConvertError(f"{node.name}: mixed dtypes")
        if op == "Div" and a.dtype.kind in "iu":
            return None  # integer division semantics differ; leave it
        r = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op](a, b)
        return r.astype(a.dtype, copy=False)
    if op == "DequantizeLinear":
        q, scale = x[0], x[1]
        zp = x[2] if len(x) > 2 and x[2] is not None else np.zeros((), q.dtype)
        if at.get("block_size", 0) or scale.ndim > 1:
            return None
        axis = at.get("axis", 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp.ndim == 1 else zp
        return ((q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(scale.dtype)
    if op == "Transpose":
        perm = at.get("perm")
        return np.ascontiguousarray(np.transpose(x[0], perm))
    if op == "Reshape":
        shape = [int(s) for s in x[1]]
        if at.get("allowzero", 0) == 0:
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x[0].reshape(shape)
    if op in ("Unsqueeze", "Squeeze"):
        axes = at.get("axes")
        if axes is None and len(x) > 1 and x[1] is not None:
            axes = [int(a) for a in x[1]]
        if op == "Squeeze":
            return np.squeeze(x[0], axis=tuple(axes) if axes is not None else None)
        r = x[0]
        rank = r.ndim + len(axes)
        for a in sorted(a % rank for a in axes):
            r = np.expand_dims(r, a)
        return r
    return None


def fold_constants(model) -> int:
    """Fold FOLDABLE nodes whose inputs are all initializers (top graph and subgraphs, outer
    initializers visible in subgraphs). Returns the number of folded nodes."""
    return _fold_graph(model.graph, {})


def _fold_graph(graph, outer: dict) -> int:
    import numpy as np
    from onnx import numpy_helper

    inits = dict(outer)
    local = {}
    for t in graph.initializer:
        local[t.name] = t
    inits.update({k: v for k, v in local.items()})
    for i in graph.input:  # a graph input shadows an initializer of the same name (IR < 4 models)
        inits.pop(i.name, None)
    cache = {}

    def arr(name):
        if name not in cache:
            cache[name] = numpy_helper.to_array(inits[name])
        return cache[name]

    folded = 0
    keep = []
    for n in graph.node:
        for a in n.attribute:
            for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                folded += _fold_graph(sg, inits)
        if (n.op_type in FOLDABLE and n.domain in ("", "ai.onnx") and len(n.output) == 1
                and n.input and n.input[0] and all((not x) or x in inits for x in n.input)):
            vals = [arr(x) if x else None for x in n.input]
            try:
                r = _eval(n, vals)
            except (ValueError, KeyError, TypeError):
                r = None
            if r is not None:
                t = numpy_helper.from_array(np.ascontiguousarray(r), n.output[0])
                graph.initializer.append(t)
                inits[n.output[0]] = t
                cache[n.output[0]] = r
                folded += 1
                continue
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused_initializers(graph)
    return folded


def _drop_unused_initializers(graph) -> None:
    used = set(o.name for o in graph.output)
    for n in graph.node:
        used.update(n.input)
        used.update(_subgraph_inputs(n))
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def prune(model, drop_inputs: bool = False) -> None:
    """Remove nodes whose outputs nobody needs, then unused initializers (and inputs)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed.update(x for x in n.input if x)
            needed.update(_subgraph_inputs(n))
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    _drop_unused_initializers(g)
    if drop_inputs:
        inputs = [i for i in g.input if i.name in needed]
        del g.input[:]
        g.input.extend(inputs)


# --------------------------------------------------------------------------
# Quantisation and the whole pipeline
# --------------------------------------------------------------------------


def quantize_int8(model_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(model_path), str(out_path),
        op_types_to_quantize=list(QUANT_SETTINGS["op_types"]),
        per_channel=QUANT_SETTINGS["per_channel"],
        reduce_range=QUANT_SETTINGS["reduce_range"],
        weight_type=getattr(QuantType, QUANT_SETTINGS["weight_type"]),
        extra_options={"MatMulConstBOnly": True},
    )


def convert(inp: Path, out: Path, part: str = "model", quantize: str = "none") -> None:
    import onnx

    try:
        buf = inp.read_bytes()
    except OSError as e:
        raise ConvertError(f"cannot read {inp}: {e.strerror or e}") from None
    model = ort_to_onnx(buf)
    if part in ("decoder", "decoder-with-past"):
        model = split_merged_decoder(model, with_past=(part == "decoder-with-past"))
    elif part != "model":
        raise ConvertError(f"unknown part {part!r}")
    fold_constants(model)
    prune(model)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-ort.", dir=out.parent) as tmp:
        tmp_float = Path(tmp) / "float.onnx"
        tmp_out = Path(tmp) / "out.onnx"
        onnx.save_model(model, str(tmp_float))
        if quantize == "int8":
            quantize_int8(tmp_float, tmp_out)
            # Re-serialise through onnx so the bytes do not depend on how the quantiser saved.
            q = onnx.load_model(str(tmp_out))
            onnx.save_model(q, str(tmp_out))
        elif quantize == "none":
            os.replace(tmp_float, tmp_out)
        else:
            raise ConvertError(f"unknown quantisation {quantize!r}")
        os.replace(tmp_out, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Convert an ORT-format model to ONNX (Moonshine).")
    ap.add_argument("input", type=Path, help="the .ort file")
    ap.add_argument("output", type=Path, help="the .onnx file to write")
    ap.add_argument("--part", choices=("model", "decoder", "decoder-with-past"), default="model")
    ap.add_argument("--quantize", choices=("int8", "none"), default="none")
    ap.add_argument("--no-bootstrap", action="store_true",
                    help="run in this interpreter (it must have the pinned versions)")
    args = ap.parse_args(argv)
    if not in_pinned_env():
        if args.no_bootstrap:
            print("error: this interpreter lacks the pinned packages: " + " ".join(REQUIREMENTS), file=sys.stderr)
            return 2
        try:
            py = ensure_venv()
        except ConvertError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        argv_all = [str(py), str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        sys.stdout.flush()
        sys.stderr.flush()
        if os.name == "nt":  # pragma: no cover
            return subprocess.call(argv_all)
        os.execv(str(py), argv_all)
    if not args.input.is_file():
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return 1
    try:
        convert(args.input, args.output, args.part, args.quantize)
    except ConvertError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
