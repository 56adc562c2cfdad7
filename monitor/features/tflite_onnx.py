"""A small TFLite -> ONNX converter for the three networks of MediaPipe's face landmarker.

``tflite2onnx`` 0.4.1 converts the face detector but fails on the landmark network (its
layout propagation through PRELU) and on the blendshape network, so this module converts
the flatbuffer itself, read with the ``tflite`` package (the schema's generated reader).
It covers exactly the operators those three networks use and raises ``ValueError`` on any
other, so a future bundle with new operators fails loudly instead of converting wrong.

Rules:
- tensors keep TFLite's layout (NHWC); convolutions and pooling are wrapped in
  NHWC->NCHW->NHWC transposes, which onnxruntime's transpose optimiser cancels between
  neighbouring convolutions;
- fp16 weights behind DEQUANTIZE are dequantised to fp32 initialisers (the networks then
  run in fp32, as MediaPipe's CPU path runs them);
- axis 0 is the batch and is made dynamic: reshapes keep it (``-1``), slices and the
  squeeze of axis 0 leave it whole, and a constant concatenated to an activation is
  broadcast to the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # optional: only the ONNX face backend needs it
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    onnx = None  # type: ignore[assignment]
    tflite = None  # type: ignore[assignment]

OPSET = 17
_NP_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
_TO_NCHW = [0, 3, 1, 2]
_TO_NHWC = [0, 2, 3, 1]


def available() -> bool:
    return onnx is not None and tflite is not None


def _op_names() -> dict[int, str]:
    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


class _Converter:
    def __init__(self, buf: bytes) -> None:
        self.m = tflite.Model.GetRootAsModel(buf, 0)
        if self.m.SubgraphsLength() != 1:
            raise ValueError("only single-subgraph models are supported")
        self.g = self.m.Subgraphs(0)
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.consts: dict[int, np.ndarray] = {}
        self._uid = 0
        self.names = _op_names()

    # -- tensors -------------------------------------------------------------------------
    def name(self, i: int) -> str:
        return f"t{i}"

    def shape(self, i: int) -> list[int]:
        t = self.g.Tensors(i)
        return t.ShapeAsNumpy().tolist() if t.ShapeLength() else []

    def const(self, i: int) -> np.ndarray | None:
        if i in self.consts:
            return self.consts[i]
        t = self.g.Tensors(i)
        b = self.m.Buffers(t.Buffer())
        if b is None or b.DataLength() == 0:
            return None
        dtype = _NP_TYPES[t.Type()]
        arr = np.frombuffer(b.DataAsNumpy().tobytes(), dtype=dtype).reshape(self.shape(i))
        self.consts[i] = arr
        return arr

    def need(self, i: int) -> np.ndarray:
        """The constant tensor i; ValueError when it is computed at run time."""
        c = self.const(i)
        if c is None:
            raise ValueError(f"tensor {i} must be a constant here")
        return c

    def tmp(self, base: str) -> str:
        self._uid += 1
        return f"{base}_{self._uid}"

    def init(self, arr: np.ndarray, base: str = "c") -> str:
        name = self.tmp(base)
        self.inits[name] = np.ascontiguousarray(arr)
        return name

    def operand(self, i: int) -> str:
        """The ONNX name of tensor i, adding an initialiser for a constant."""
        c = self.const(i)
        if c is not None and self.name(i) not in self.inits:
            self.inits[self.name(i)] = c.astype(np.float32) if c.dtype == np.float16 else c
        return self.name(i)

    def node(self, op: str, ins: list[str], outs: list[str] | None = None, **attrs: Any) -> str:
        outs = outs or [self.tmp(op.lower())]
        self.nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    def activation(self, x: str, code: int, out: str) -> None:
        if code == 0:
            self.node("Identity", [x], [out])
        elif code == 1:
            self.node("Relu", [x], [out])
        elif code == 3:
            self.node("Clip", [x, self.init(np.array(0, np.float32)), self.init(np.array(6, np.float32))], [out])
        else:
            raise ValueError(f"fused activation {code} not supported")

    @staticmethod
    def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def pads(self, padding: int, hw: list[int], k: list[int], s: list[int], d: list[int]) -> list[int]:
        if padding == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        top, bottom = self.same_pads(hw[0], k[0], s[0], d[0])
        left, right = self.same_pads(hw[1], k[1], s[1], d[1])
        return [top, left, bottom, right]

    # -- operators -----------------------------------------------------------------------
    def convert(self) -> Any:
        for k in range(self.g.OperatorsLength()):
            op = self.g.Operators(k)
            oc = self.m.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            kind = self.names.get(code, str(code))
            ins = [int(i) for i in op.InputsAsNumpy()]
            outs = [int(i) for i in op.OutputsAsNumpy()]
            handler = getattr(self, f"op_{kind.lower()}", None)
            if handler is None:
                raise ValueError(f"TFLite operator {kind} is not supported by this converter")
            handler(op, ins, outs)
        inputs = [self._value_info(i, dynamic=True) for i in self.g.InputsAsNumpy()]
        outputs = [self._value_info(i, dynamic=True, output=True) for i in self.g.OutputsAsNumpy()]
        used = {n for node in self.nodes for n in node.input}
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items() if k in used]
        graph = helper.make_graph(self.nodes, "tflite", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="expose.tflite_onnx")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def _value_info(self, i: int, dynamic: bool, output: bool = False) -> Any:
        shape: list = self.shape(i)
        if output and len(shape) == 1:  # the batch axis that the last slice dropped
            shape = [1] + shape
        if dynamic and shape:
            shape = ["N"] + shape[1:]
        name = self.name(i)
        if output:
            name = self.g.Tensors(i).Name().decode()
            self.node("Identity", [self.name(i)], [name])
        else:
            name = self.g.Tensors(i).Name().decode()
            self.node_first("Identity", [name], [self.name(i)])
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def node_first(self, op: str, ins: list[str], outs: list[str]) -> None:
        self.nodes.insert(0, helper.make_node(op, ins, outs))

    def op_dequantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        c = self.const(ins[0])
        if c is None:
            raise ValueError("DEQUANTIZE of a non-constant tensor")
        if self.g.Tensors(ins[0]).Type() != 1:
            raise ValueError("DEQUANTIZE of integer (quantised) weights is not supported")
        self.consts[outs[0]] = c.astype(np.float32)

    def _conv(self, op: Any, ins: list[int], outs: list[int], depthwise: bool) -> None:
        opts = (tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        w = self.need(ins[1]).astype(np.float32)
        x_shape = self.shape(ins[0])
        if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw]
            weight = w.transpose(3, 0, 1, 2)
            group = x_shape[3]
        else:  # [O, kh, kw, I] -> [O, I, kh, kw]
            weight = w.transpose(0, 3, 1, 2)
            group = 1
        k = list(weight.shape[2:])
        s = [opts.StrideH(), opts.StrideW()]
        d = [opts.DilationHFactor(), opts.DilationWFactor()]
        args = [self.node("Transpose", [self.operand(ins[0])], perm=_TO_NCHW), self.init(weight, "w")]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.init(self.need(ins[2]).astype(np.float32), "b"))
        y = self.node("Conv", args, kernel_shape=k, strides=s, dilations=d, group=group,
                      pads=self.pads(opts.Padding(), x_shape[1:3], k, s, d))
        y = self.node("Transpose", [y], perm=_TO_NHWC)
        self.activation(y, opts.FusedActivationFunction(), self.name(outs[0]))

    def op_conv_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._conv(op, ins, outs, depthwise=False)

    def op_depthwise_conv_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._conv(op, ins, outs, depthwise=True)

    def op_max_pool_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        opts = tflite.Pool2DOptions()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        k = [opts.FilterHeight(), opts.FilterWidth()]
        s = [opts.StrideH(), opts.StrideW()]
        x = self.node("Transpose", [self.operand(ins[0])], perm=_TO_NCHW)
        y = self.node("MaxPool", [x], kernel_shape=k, strides=s,
                      pads=self.pads(opts.Padding(), self.shape(ins[0])[1:3], k, s, [1, 1]))
        y = self.node("Transpose", [y], perm=_TO_NHWC)
        self.activation(y, opts.FusedActivationFunction(), self.name(outs[0]))

    def _binary(self, op: Any, ins: list[int], outs: list[int], kind: str, opts_cls: Any) -> None:
        code = 0
        if opts_cls is not None and op.BuiltinOptions() is not None:
            opts = opts_cls()
            t = op.BuiltinOptions()
            opts.Init(t.Bytes, t.Pos)
            code = opts.FusedActivationFunction()
        y = self.node(kind, [self.operand(ins[0]), self.operand(ins[1])])
        self.activation(y, code, self.name(outs[0]))

    def op_add(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary(op, ins, outs, "Add", tflite.AddOptions)

    def op_sub(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary(op, ins, outs, "Sub", tflite.SubOptions)

    def op_mul(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary(op, ins, outs, "Mul", tflite.MulOptions)

    def op_div(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary(op, ins, outs, "Div", tflite.DivOptions)

    def op_squared_difference(self, op: Any, ins: list[int], outs: list[int]) -> None:
        d = self.node("Sub", [self.operand(ins[0]), self.operand(ins[1])])
        self.node("Mul", [d, d], [self.name(outs[0])])

    def _unary(self, ins: list[int], outs: list[int], kind: str) -> None:
        self.node(kind, [self.operand(ins[0])], [self.name(outs[0])])

    def op_relu(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._unary(ins, outs, "Relu")

    def op_logistic(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._unary(ins, outs, "Sigmoid")

    def op_neg(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._unary(ins, outs, "Neg")

    def op_sqrt(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._unary(ins, outs, "Sqrt")

    def op_rsqrt(self, op: Any, ins: list[int], outs: list[int]) -> None:
        s = self.node("Sqrt", [self.operand(ins[0])])
        self.node("Reciprocal", [s], [self.name(outs[0])])

    def op_prelu(self, op: Any, ins: list[int], outs: list[int]) -> None:
        alpha = self.const(ins[1])
        shape = self.shape(ins[0])
        if alpha is None or len(shape) != 4 or alpha.size != shape[3]:
            self.node("PRelu", [self.operand(ins[0]), self.operand(ins[1])], [self.name(outs[0])])
            return
        # onnxruntime's NCHWc layout has no PRelu (it reorders to NCHW and back around each
        # one, ~40% of the landmark network's CPU time); as depthwise 1x1 convolutions it
        # stays blocked: prelu(x) = x + (1 - alpha) * relu(-x)
        c = shape[3]
        a = alpha.astype(np.float32).reshape(c)
        x = self.node("Transpose", [self.operand(ins[0])], perm=_TO_NCHW)
        neg = self.node("Conv", [x, self.init(np.full((c, 1, 1, 1), -1.0, np.float32), "w")], group=c,
                        kernel_shape=[1, 1])
        r = self.node("Relu", [neg])
        s = self.node("Conv", [r, self.init((1.0 - a).reshape(c, 1, 1, 1), "w")], group=c, kernel_shape=[1, 1])
        y = self.node("Add", [x, s])
        self.node("Transpose", [y], [self.name(outs[0])], perm=_TO_NHWC)

    def op_pad(self, op: Any, ins: list[int], outs: list[int]) -> None:
        p = self.need(ins[1]).astype(np.int64)  # [rank, 2]
        pads = np.concatenate([p[:, 0], p[:, 1]])
        self.node("Pad", [self.operand(ins[0]), self.init(pads, "pads")], [self.name(outs[0])])

    def op_reshape(self, op: Any, ins: list[int], outs: list[int]) -> None:
        shape = [int(v) for v in self.shape(outs[0])]
        if len(ins) > 1 and self.const(ins[1]) is not None:
            shape = [int(v) for v in self.need(ins[1])]
        if shape and shape[0] == 1 and -1 not in shape[1:]:
            shape[0] = -1  # keep the batch
        self.node("Reshape", [self.operand(ins[0]), self.init(np.array(shape, np.int64), "shape")],
                  [self.name(outs[0])])

    def op_transpose(self, op: Any, ins: list[int], outs: list[int]) -> None:
        perm = [int(v) for v in self.need(ins[1])]
        if perm[0] != 0:
            raise ValueError("TRANSPOSE that moves the batch axis")
        self.node("Transpose", [self.operand(ins[0])], [self.name(outs[0])], perm=perm)

    def _reduce(self, op: Any, ins: list[int], outs: list[int], kind: str) -> None:
        opts = tflite.ReducerOptions()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        axes = np.atleast_1d(self.need(ins[1])).astype(np.int64)
        if kind == "ReduceMean":  # axes is an attribute until opset 18
            self.node(kind, [self.operand(ins[0])], [self.name(outs[0])], axes=axes.tolist(),
                      keepdims=int(opts.KeepDims()))
        else:
            self.node(kind, [self.operand(ins[0]), self.init(axes, "axes")], [self.name(outs[0])],
                      keepdims=int(opts.KeepDims()))

    def op_mean(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce(op, ins, outs, "ReduceMean")

    def op_sum(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce(op, ins, outs, "ReduceSum")

    def op_concatenation(self, op: Any, ins: list[int], outs: list[int]) -> None:
        opts = tflite.ConcatenationOptions()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        axis = opts.Axis()
        dynamic = [i for i in ins if self.const(i) is None]
        args = []
        for i in ins:
            c = self.const(i)
            if c is not None and dynamic and axis != 0 and c.shape[0] == 1:
                # broadcast a constant (e.g. a class token) to the activation's batch
                batch = self.node("Slice", [self.node("Shape", [self.operand(dynamic[0])]),
                                            self.init(np.array([0], np.int64)),
                                            self.init(np.array([1], np.int64))])
                rest = self.init(np.array(c.shape[1:], np.int64), "rest")
                args.append(self.node("Expand", [self.operand(i), self.node("Concat", [batch, rest], axis=0)]))
            else:
                args.append(self.operand(i))
        y = self.node("Concat", args, axis=axis)
        self.activation(y, opts.FusedActivationFunction(), self.name(outs[0]))

    def op_strided_slice(self, op: Any, ins: list[int], outs: list[int]) -> None:
        opts = tflite.StridedSliceOptions()
        t = op.BuiltinOptions()
        opts.Init(t.Bytes, t.Pos)
        begin, end, strides = (self.need(i).astype(np.int64) for i in ins[1:4])
        rank = len(begin)
        if opts.EllipsisMask() or opts.NewAxisMask():
            raise ValueError("STRIDED_SLICE with ellipsis or new axes")
        starts, ends, axes, steps, squeeze = [], [], [], [], []
        big = np.iinfo(np.int64).max
        for a in range(1, rank):  # axis 0 is the batch: left whole
            b = 0 if opts.BeginMask() >> a & 1 else int(begin[a])
            e = big if opts.EndMask() >> a & 1 else int(end[a])
            if opts.ShrinkAxisMask() >> a & 1:
                e = b + 1
                squeeze.append(a)
            starts.append(b)
            ends.append(e)
            axes.append(a)
            steps.append(int(strides[a]))
        y = self.node("Slice", [self.operand(ins[0]), self.init(np.array(starts, np.int64)),
                                self.init(np.array(ends, np.int64)), self.init(np.array(axes, np.int64)),
                                self.init(np.array(steps, np.int64))])
        if squeeze:
            y = self.node("Squeeze", [y, self.init(np.array(squeeze, np.int64))])
        self.node("Identity", [y], [self.name(outs[0])])


def convert_tflite(buf: bytes) -> Any:
    """TFLite flatbuffer bytes -> an ONNX model with a dynamic batch axis."""
    if not available():
        raise ImportError("converting TFLite to ONNX needs the `onnx` and `tflite` packages")
    return _Converter(buf).convert()
