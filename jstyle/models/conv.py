"""Conv2d whose CPU float32 forward calls oneDNN once per call, with no fresh memory per call.

Jittor's own oneDNN convolution builds its engine, stream and buffers on every call: each call maps fresh pages for the
reordered weights, input and output (the kernel zeroes them: about half of a UNet step's time on CPU) and adds the bias
in a separate pass. This op keeps one engine, the primitives per shape, grow-only scratch buffers and, optionally, the
reordered weights (`JSTYLE_CONV_CACHE_MB`), and fuses the bias. Elsewhere (CUDA, float16, no oneDNN) it is Jittor's
`nn.Conv2d`. The input gradient is the same kind of oneDNN call; the weight gradient (trained convs
only) is Jittor's oneDNN op.
"""

from __future__ import annotations

import os

import jittor as jt
from jittor import nn

from .. import kernels

__all__ = ["Conv2d", "conv2d", "fast_conv_available"]

_HEADER = r"""
#include <dnnl.hpp>
#include <cstdlib>
#include <new>
#include <list>
#include <string>
#include <unordered_map>

namespace jstyle_conv {
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Runtime {
    engine eng;
    stream strm;
    Runtime() : eng(engine::kind::cpu, 0), strm(eng) {}
};
inline Runtime& runtime() { static Runtime r; return r; }

// A grow-only page-aligned buffer kept for the process: its pages are mapped (and zeroed by the kernel) once.
struct Buffer {
    void* ptr = nullptr;
    size_t size = 0;
    void* get(size_t n) {
        if (n > size) {
            std::free(ptr);
            size = (n + 4095) / 4096 * 4096;
            if (posix_memalign(&ptr, 4096, size)) { ptr = nullptr; size = 0; throw std::bad_alloc(); }
        }
        return ptr;
    }
};
inline Buffer& buffer(int i) { static Buffer b[3]; return b[i]; }

inline std::string key_of(const std::vector<memory::dims>& all, bool bias) {
    std::string k = bias ? "b" : "n";
    for (auto& d : all) { k += "|"; for (auto v : d) k += std::to_string(v) + ","; }
    return k;
}

inline memory::desc any_layout(const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); }

// A primitive and its descriptor, kept per shape key: `make()` runs once per key.
template <class Pd, class Prim> struct Kept { Pd pd; Prim prim; };

template <class T, class Make> T& kept(std::unordered_map<std::string, T>& cache, const std::string& key, Make make) {
    auto it = cache.find(key);
    return it != cache.end() ? it->second : cache.emplace(key, make()).first->second;
}

// oihw -> a blocked layout with one inner block on o (brgconv's Acdb32a and its kin), over OpenMP threads, one
// block of B output channels per task: oneDNN 2.6's generic reorder takes about as long as the convolution here.
// False when `want` is another kind of layout.
inline bool pack_weights(const float* w, const memory::desc& want, float* dst, long parallel_min) {
    const dnnl_memory_desc_t& d = want.data;
    if (d.format_kind != dnnl_blocked || d.ndims != 4 || d.extra.flags != 0) return false;
    const auto& b = d.format_desc.blocking;
    if (b.inner_nblks != 1 || b.inner_idxs[0] != 0) return false;
    const long O = d.dims[0], I = d.dims[1], KH = d.dims[2], KW = d.dims[3], B = b.inner_blks[0];
    if (d.padded_dims[1] != I || d.padded_dims[2] != KH || d.padded_dims[3] != KW) return false;
    const long OB = d.padded_dims[0] / B, HW = KH * KW;
    const long s0 = b.strides[0], s1 = b.strides[1], s2 = b.strides[2], s3 = b.strides[3];
    dst += d.offset0;
    // threads only for weights of jstyle.kernels.PARALLEL_MIN floats or more (a parallel region can wait a scheduler
    // slice for a core another process holds, more than packing a small weight takes)
    #pragma omp parallel for schedule(static) if (OB * B * I * HW >= parallel_min)
    for (long ob = 0; ob < OB; ob++)
        for (long i = 0; i < I; i++)
            for (long hw = 0; hw < HW; hw++) {
                float* to = dst + ob * s0 + i * s1 + (hw / KW) * s2 + (hw % KW) * s3;
                const float* from = w + i * HW + hw;
                for (long oi = 0; oi < B; oi++) {
                    const long o = ob * B + oi;
                    to[oi] = o < O ? from[o * I * HW] : 0.f;
                }
            }
    return true;
}

inline void reorder_weights(memory& user, memory& m, long parallel_min) {
    auto& r = runtime();
    if (!pack_weights(static_cast<const float*>(user.get_data_handle()), m.get_desc(),
                      static_cast<float*>(m.get_data_handle()), parallel_min))
        reorder(user, m).execute(r.strm, user, m);
}

// Reordered weights by the weight Var's node id (Jittor never reuses one; assign/update make a new node),
// least recently used dropped first beyond `budget` bytes.
struct Packed { long long id; memory mem; size_t bytes; };
inline std::list<Packed>& packed() { static std::list<Packed> l; return l; }
inline size_t& packed_bytes() { static size_t n = 0; return n; }

inline memory weights_for(long long id, memory& user, const memory::desc& want, size_t budget, long parallel_min) {
    auto& r = runtime();
    if (user.get_desc() == want) return user;
    if (budget == 0) {
        memory m(want, r.eng, buffer(1).get(want.get_size()));
        reorder_weights(user, m, parallel_min);
        return m;
    }
    auto& l = packed();
    for (auto it = l.begin(); it != l.end(); ++it) {
        if (it->id == id && it->mem.get_desc() == want) {
            l.splice(l.begin(), l, it);
            return l.front().mem;
        }
    }
    memory m(want, r.eng);
    reorder_weights(user, m, parallel_min);
    l.push_front(Packed{id, m, want.get_size()});
    packed_bytes() += want.get_size();
    while (packed_bytes() > budget && l.size() > 1) {
        packed_bytes() -= l.back().bytes;
        l.pop_back();
    }
    return m;
}
// `user` in the layout `want`: itself when it already is, else a copy in kept buffer `slot`.
inline memory in_layout(memory& user, const memory::desc& want, int slot) {
    if (want == user.get_desc()) return user;
    auto& r = runtime();
    memory m(want, r.eng, buffer(slot).get(want.get_size()));
    reorder(user, m).execute(r.strm, user, m);
    return m;
}

// Where a primitive writes `user` in the layout `want`: `user` itself, or kept buffer `slot` (then `copy_back`).
inline memory out_layout(memory& user, const memory::desc& want, int slot) {
    if (want == user.get_desc()) return user;
    return memory(want, runtime().eng, buffer(slot).get(want.get_size()));
}

inline void copy_back(memory& written, memory& user) {
    auto& r = runtime();
    if (written != user) reorder(written, user).execute(r.strm, written, user);
    r.strm.wait();
}

inline void forward(float* x, float* w, float* b, float* y, long long wid, const memory::dims& src,
        const memory::dims& wei, const memory::dims& dst, const memory::dims& strides, const memory::dims& dil,
        const memory::dims& pad, size_t budget, long parallel_min) {
    using Conv = Kept<convolution_forward::primitive_desc, convolution_forward>;
    static std::unordered_map<std::string, Conv> convs;
    auto& r = runtime();
    auto& c = kept(convs, key_of({src, wei, dst, strides, dil, pad}, b != nullptr), [&] {
        auto desc = b
            ? convolution_forward::desc(prop_kind::forward_inference, algorithm::convolution_direct, any_layout(src),
                  any_layout(wei), memory::desc({dst[1]}, dt::f32, tag::a), any_layout(dst), strides, dil, pad, pad)
            : convolution_forward::desc(prop_kind::forward_inference, algorithm::convolution_direct, any_layout(src),
                  any_layout(wei), any_layout(dst), strides, dil, pad, pad);
        convolution_forward::primitive_desc pd(desc, r.eng);
        return Conv{pd, convolution_forward(pd)};
    });
    memory user_src({src, dt::f32, tag::nchw}, r.eng, x);
    memory user_wei({wei, dt::f32, tag::oihw}, r.eng, w);
    memory user_dst({dst, dt::f32, tag::nchw}, r.eng, y);
    memory conv_src = in_layout(user_src, c.pd.src_desc(), 0);
    memory conv_wei = weights_for(wid, user_wei, c.pd.weights_desc(), budget, parallel_min);
    memory conv_dst = out_layout(user_dst, c.pd.dst_desc(), 2);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, conv_src}, {DNNL_ARG_WEIGHTS, conv_wei},
                                         {DNNL_ARG_DST, conv_dst}};
    if (b) args.insert({DNNL_ARG_BIAS, memory({{dst[1]}, dt::f32, tag::a}, r.eng, b)});
    c.prim.execute(r.strm, args);
    copy_back(conv_dst, user_dst);
}

// dx = conv^T(dy, W): the gradient of `forward` with respect to its input, with the same buffers.
inline void backward_data(float* dy, float* w, float* dx, const memory::dims& src, const memory::dims& wei,
        const memory::dims& dst, const memory::dims& strides, const memory::dims& dil, const memory::dims& pad,
        long parallel_min) {
    using Bwd = Kept<convolution_backward_data::primitive_desc, convolution_backward_data>;
    static std::unordered_map<std::string, Bwd> bwds;
    auto& r = runtime();
    auto& c = kept(bwds, key_of({src, wei, dst, strides, dil, pad}, false), [&] {
        convolution_forward::primitive_desc hint(convolution_forward::desc(prop_kind::forward_training,
            algorithm::convolution_direct, any_layout(src), any_layout(wei), any_layout(dst), strides, dil, pad, pad),
            r.eng);
        convolution_backward_data::primitive_desc pd(convolution_backward_data::desc(algorithm::convolution_direct,
            any_layout(src), any_layout(wei), any_layout(dst), strides, dil, pad, pad), r.eng, hint);
        return Bwd{pd, convolution_backward_data(pd)};
    });
    memory user_dy({dst, dt::f32, tag::nchw}, r.eng, dy);
    memory user_wei({wei, dt::f32, tag::oihw}, r.eng, w);
    memory user_dx({src, dt::f32, tag::nchw}, r.eng, dx);
    memory conv_dy = in_layout(user_dy, c.pd.diff_dst_desc(), 0);
    memory conv_wei = weights_for(0, user_wei, c.pd.weights_desc(), 0, parallel_min);
    memory conv_dx = out_layout(user_dx, c.pd.diff_src_desc(), 2);
    c.prim.execute(r.strm, {{DNNL_ARG_DIFF_DST, conv_dy}, {DNNL_ARG_WEIGHTS, conv_wei}, {DNNL_ARG_DIFF_SRC, conv_dx}});
    copy_back(conv_dx, user_dx);
}
}  // namespace jstyle_conv
"""

# in0 = x [N, C, H, W], in1 = weight [O, C, KH, KW], in2 = bias [O] (when BIAS); out0 = y [N, O, OH, OW]
_SRC = r"""
jstyle_conv::forward(in0_p, in1_p, BIAS_PTR, out0_p, (long long)in1->id,
    {in0_shape0, in0_shape1, in0_shape2, in0_shape3}, {in1_shape0, in1_shape1, in1_shape2, in1_shape3},
    {out0_shape0, out0_shape1, out0_shape2, out0_shape3}, {SH, SW}, {DH, DW}, {PH, PW}, BUDGET, PARALLEL_MIN);
"""


# in0 = dy [N, O, OH, OW], in1 = weight [O, C, KH, KW]; out0 = dx [N, C, H, W]
_BWD_SRC = r"""
jstyle_conv::backward_data(in0_p, in1_p, out0_p,
    {out0_shape0, out0_shape1, out0_shape2, out0_shape3}, {in1_shape0, in1_shape1, in1_shape2, in1_shape3},
    {in0_shape0, in0_shape1, in0_shape2, in0_shape3}, {SH, SW}, {DH, DW}, {PH, PW}, PARALLEL_MIN);
"""


def fast_conv_available() -> bool:
    """True where this module's oneDNN forward runs: CPU with Jittor's oneDNN ops (use_mkl=1)."""
    return not jt.flags.use_cuda and getattr(jt, "mkl_ops", None) is not None


def _budget() -> int:
    """Bytes of reordered weights kept between calls (JSTYLE_CONV_CACHE_MB; 0, the default, keeps none)."""
    return int(float(os.environ.get("JSTYLE_CONV_CACHE_MB", "0")) * 2**20)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1  # torch.nn.Conv2d's output size


def _source(template: str, stride, padding, dilation, bias: bool = False) -> str:
    for name, value in (("SH", stride[0]), ("SW", stride[1]), ("DH", dilation[0] - 1), ("DW", dilation[1] - 1),
                        ("PH", padding[0]), ("PW", padding[1]), ("BUDGET", f"{_budget()}ull"),
                        ("BIAS_PTR", "in2_p" if bias else "nullptr"), ("PARALLEL_MIN", f"{kernels.PARALLEL_MIN}L")):
        template = template.replace(name, str(value))
    return template


def _forward(x: jt.Var, weight: jt.Var, bias: jt.Var | None, stride, padding, dilation) -> jt.Var:
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    shape = (n, o, _out_size(h, kh, stride[0], padding[0], dilation[0]),
             _out_size(w, kw, stride[1], padding[1], dilation[1]))
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return jt.code(shape, "float32", inputs, cpu_header=_HEADER,
                   cpu_src=_source(_SRC, stride, padding, dilation, bias is not None))


def _backward_data(dy: jt.Var, weight: jt.Var, x_shape, stride, padding, dilation) -> jt.Var:
    return jt.code(tuple(x_shape), "float32", [dy, weight], cpu_header=_HEADER,
                   cpu_src=_source(_BWD_SRC, stride, padding, dilation))


class _Conv(jt.Function):
    """y = conv(x, W) + b by oneDNN; dx by oneDNN here, dW by Jittor's oneDNN op (each computed only where used)."""

    def execute(self, x, weight, bias, stride, padding, dilation):
        self.saved = (x, weight, stride, padding, dilation, bias is not None)
        return _forward(x, weight, bias, stride, padding, dilation)

    def grad(self, dy):
        x, weight, stride, padding, dilation, has_bias = self.saved
        args = (*stride, *padding, *dilation, 1)
        dx = _backward_data(dy, weight, x.shape, stride, padding, dilation)
        dw = jt.mkl_ops.mkl_conv_backward_w(x, dy, weight.shape[2], weight.shape[3], *args)
        db = dy.sum([0, 2, 3]) if has_bias else None
        return dx, dw, db


def conv2d(x: jt.Var, weight: jt.Var, bias: jt.Var | None = None, stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1)) -> jt.Var:
    """torch.nn.functional.conv2d (groups=1) on [N, C, H, W] float32 by oneDNN; elsewhere Jittor's nn.conv2d."""
    if not (fast_conv_available() and x.dtype == "float32" and weight.dtype == "float32"
            and (bias is None or bias.dtype == "float32")):
        return nn.conv2d(x, weight, bias, stride, padding, dilation)
    if jt.flags.no_grad:
        return _forward(x, weight, bias, stride, padding, dilation)
    return _Conv.apply(x, weight, bias, stride, padding, dilation)


class Conv2d(nn.Conv2d):
    """jittor.nn.Conv2d (same parameters and state-dict keys) whose forward is `conv2d` above."""

    def execute(self, x: jt.Var) -> jt.Var:
        if self.groups != 1:
            return super().execute(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
