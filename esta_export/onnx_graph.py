"""Build a stitch's ONNX graph straight from its slice's weights, with onnx.helper.

Why not ``torch.onnx.export`` per stitch: a family has 71-135 stitches built from a few block
kinds, and tracing each one from scratch costs ~24x exporting the anchors. Every stitch is the same
few sub-graphs (embedding, ViT block, stitching Linear, tail) wired in a different order, so we
emit them directly: standard ops only (Conv, MatMul, Add, Softmax, Erf, LayerNormalization or its
decomposition), names under our control, and every weight an initializer that the shared store can
point into. Correctness is not assumed: every graph is checked on ONNX Runtime against the PyTorch
slice it came from.

Linear weights are stored transposed ([in, out]) for MatMul; the head uses Gemm(transB=1) and keeps
PyTorch's layout.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper

from .supernet.anchors import AnchorConfig

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
MIN_OPSET = 13           # Softmax over the last axis only, Squeeze/Unsqueeze axes as inputs
MAX_OPSET = 21
LAYERNORM_MODES = ("op", "decomposed")


class GraphBuilder:
    def __init__(self, opset: int, layernorm: str) -> None:
        self.opset = opset
        self.layernorm = "decomposed" if opset < 17 else layernorm
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}     # initializer name -> array (goes to the store)
        self.consts: dict[str, np.ndarray] = {}      # small constants, kept inside the graph
        self._n = 0

    # -- primitives ------------------------------------------------------------------------------
    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self._name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(self, name: str, arr: np.ndarray) -> str:
        # Kept as given (often a transposed view of a supernet tensor): the weight store makes it
        # contiguous only when it has not stored that tensor already.
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        self.weights[name] = arr
        return name

    def const(self, hint: str, arr) -> str:
        arr = np.asarray(arr)
        # Content-derived and process-independent (not hash()), so exports are byte-identical.
        digest = hashlib.sha1(arr.tobytes() + str((arr.dtype, arr.shape)).encode()).hexdigest()[:10]
        key = f"c_{hint}_{digest}"
        self.consts[key] = arr
        return key

    # -- layers ----------------------------------------------------------------------------------
    def linear(self, x: str, prefix: str, w: np.ndarray, b: np.ndarray | None) -> str:
        y = self.node("MatMul", [x, self.weight(f"{prefix}.weight_t", w.T)], f"{prefix}.matmul")
        if b is not None:
            y = self.node("Add", [y, self.weight(f"{prefix}.bias", b)], f"{prefix}.add")
        return y

    def layer_norm(self, x: str, prefix: str, gamma: np.ndarray, beta: np.ndarray, eps: float) -> str:
        g, b = self.weight(f"{prefix}.weight", gamma), self.weight(f"{prefix}.bias", beta)
        if self.layernorm == "op":
            return self.node("LayerNormalization", [x, g, b], f"{prefix}.ln", axis=-1, epsilon=eps)
        # The pattern ONNX Runtime's LayerNormFusion recognises; TensorRT 8.5 / DLA need it decomposed.
        mean = self._reduce_mean(x, f"{prefix}.mean")
        d = self.node("Sub", [x, mean], f"{prefix}.sub")
        sq = self.node("Pow", [d, self.const("two", np.array(2.0, np.float32))], f"{prefix}.pow")
        var = self._reduce_mean(sq, f"{prefix}.var")
        std = self.node("Sqrt", [self.node("Add", [var, self.const("eps", np.array(eps, np.float32))],
                                           f"{prefix}.addeps")], f"{prefix}.sqrt")
        y = self.node("Div", [d, std], f"{prefix}.div")
        return self.node("Add", [self.node("Mul", [y, g], f"{prefix}.mul"), b], f"{prefix}.shift")

    def _reduce_mean(self, x: str, hint: str) -> str:
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const("axes_last", np.array([-1], np.int64))], hint, keepdims=1)
        return self.node("ReduceMean", [x], hint, axes=[-1], keepdims=1)

    def gelu(self, x: str, hint: str) -> str:
        # Exact (erf) GELU, in the form ONNX Runtime's GeluFusion recognises.
        d = self.node("Div", [x, self.const("sqrt2", np.array(np.sqrt(2.0), np.float32))], f"{hint}.div")
        e = self.node("Erf", [d], f"{hint}.erf")
        a = self.node("Add", [e, self.const("one", np.array(1.0, np.float32))], f"{hint}.add")
        m = self.node("Mul", [x, a], f"{hint}.mul")
        return self.node("Mul", [m, self.const("half", np.array(0.5, np.float32))], f"{hint}.half")

    def block(self, x: str, prefix: str, cfg: AnchorConfig, sd: dict[str, np.ndarray]) -> str:
        d, h = cfg.embed_dim, cfg.num_heads
        hd = d // h
        p = prefix + "."
        n1 = self.layer_norm(x, p + "norm1", sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.ln_eps)
        qkv = self.linear(n1, p + "attn.qkv", sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        qkv = self.node("Reshape", [qkv, self.const("qkv_shape", np.array([0, 0, 3, h, hd], np.int64))], p + "qkv.reshape")
        qkv = self.node("Transpose", [qkv], p + "qkv.perm", perm=[2, 0, 3, 1, 4])
        q, k, v = (self.node("Gather", [qkv, self.const(f"idx{i}", np.array(i, np.int64))], p + f"qkv.{n}", axis=0)
                   for i, n in enumerate("qkv"))
        kt = self.node("Transpose", [k], p + "k.t", perm=[0, 1, 3, 2])
        s = self.node("MatMul", [q, kt], p + "attn.scores")
        s = self.node("Mul", [s, self.const("scale", np.array(hd ** -0.5, np.float32))], p + "attn.scale")
        a = self.node("Softmax", [s], p + "attn.softmax", axis=-1)
        o = self.node("MatMul", [a, v], p + "attn.av")
        o = self.node("Transpose", [o], p + "attn.merge", perm=[0, 2, 1, 3])
        o = self.node("Reshape", [o, self.const("merge_shape", np.array([0, 0, d], np.int64))], p + "attn.reshape")
        o = self.linear(o, p + "attn.proj", sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        if cfg.style == "deit3":
            o = self.node("Mul", [o, self.weight(p + "gamma_1", sd[p + "gamma_1"])], p + "ls1")
        x = self.node("Add", [x, o], p + "res1")
        n2 = self.layer_norm(x, p + "norm2", sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.ln_eps)
        m = self.linear(n2, p + "mlp.fc1", sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
        m = self.gelu(m, p + "mlp.gelu")
        m = self.linear(m, p + "mlp.fc2", sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        if cfg.style == "deit3":
            m = self.node("Mul", [m, self.weight(p + "gamma_2", sd[p + "gamma_2"])], p + "ls2")
        return self.node("Add", [x, m], p + "res2")

    def embed(self, x: str, cfg: AnchorConfig, sd: dict[str, np.ndarray]) -> str:
        d, ps = cfg.embed_dim, cfg.patch_size
        y = self.node("Conv", [x, self.weight("patch_embed.proj.weight", sd["patch_embed.proj.weight"]),
                               self.weight("patch_embed.proj.bias", sd["patch_embed.proj.bias"])],
                      "patch_embed", kernel_shape=[ps, ps], strides=[ps, ps])
        y = self.node("Reshape", [y, self.const("flat", np.array([0, d, -1], np.int64))], "patch_flat")
        y = self.node("Transpose", [y], "patch_tokens", perm=[0, 2, 1])
        batch = self.node("Gather", [self.node("Shape", [x], "in_shape"),
                                     self.const("i0", np.array([0], np.int64))], "batch")
        cls_shape = self.node("Concat", [batch, self.const("cls_rest", np.array([1, d], np.int64))], "cls_shape", axis=0)
        cls = self.node("Expand", [self.weight("cls_token", sd["cls_token"]), cls_shape], "cls")
        pos = self.weight("pos_embed", sd["pos_embed"])
        if cfg.style == "deit3":
            y = self.node("Add", [y, pos], "pos_add")
            return self.node("Concat", [cls, y], "tokens", axis=1)
        y = self.node("Concat", [cls, y], "tokens", axis=1)
        return self.node("Add", [y, pos], "pos_add")

    def tail(self, x: str, cfg: AnchorConfig, sd: dict[str, np.ndarray], final_norm: bool) -> str:
        h = self.node("Gather", [x, self.const("i0s", np.array(0, np.int64))], "cls_pool", axis=1)
        if final_norm:
            h = self.layer_norm(h, "norm", sd["norm.weight"], sd["norm.bias"], cfg.ln_eps)
        w = self.weight("head.weight", sd["head.weight"])
        b = self.weight("head.bias", sd["head.bias"])
        self.nodes.append(helper.make_node("Gemm", [h, w, b], [OUTPUT_NAME], name="head", transB=1))
        return OUTPUT_NAME


def build_stitch_graph(anchors: tuple[AnchorConfig, ...], final_norm: bool, sd: dict[str, np.ndarray],
                       opset: int, layernorm: str, doc: str = "") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Graph of a slice (``anchors`` = the anchor of each segment) from the slice's state dict.

    Returns the model with weight initializers *not yet attached* and the weights by name, so the
    caller decides where they are stored.
    """
    g = GraphBuilder(opset, layernorm)
    first = anchors[0]
    x = g.embed(INPUT_NAME, first, sd)
    for s, cfg in enumerate(anchors):
        if s > 0:
            x = g.linear(x, f"stitches.{s - 1}", sd[f"stitches.{s - 1}.weight"], sd[f"stitches.{s - 1}.bias"])
        b = 0
        while f"segments.{s}.{b}.norm1.weight" in sd:
            x = g.block(x, f"segments.{s}.{b}", cfg, sd)
            b += 1
    last = anchors[-1]
    g.tail(x, last, sd, final_norm)
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                        ["batch", first.in_chans, first.img_size, first.img_size])
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", last.num_classes])
    consts = [onnx.numpy_helper.from_array(v, k) for k, v in g.consts.items()]
    graph = helper.make_graph(g.nodes, "stitch", [inp], [out], initializer=consts, doc_string=doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="esta-export")
    model.ir_version = min(model.ir_version, _max_ir_version(opset))
    return model, g.weights


def _max_ir_version(opset: int) -> int:
    # Keep the IR version readable by older runtimes (ORT 1.17 reads IR <= 9; opset 21 needs IR 10).
    return 10 if opset >= 21 else 9 if opset >= 19 else 8
