"""Multi-threaded CPU kernels for the hot non-GEMM ops: GroupNorm (+ SiLU), LayerNorm, GEGLU, softmax's exp, and
inference attention over short sequences.

Jittor's generic kernels run on one thread; these are `jt.code` ops whose loops are split across cores by
OpenMP (Jittor already compiles every kernel with -fopenmp and loads libgomp, which oneDNN shares). Each has a
`jt.Function` with a multi-threaded backward kernel (attention excepted: inference only); each does in one pass
what Jittor runs as several kernels.
The callers use them only where `enabled(x)` holds (CPU and float32) and keep their Jittor expressions
everywhere else; the expressions are the reference the tests compare with (tests/jstyle/test_kernels.py).
Plain SiLU and GELU kernels were measured slower than Jittor's fused elementwise loops and are not here.
Scalars (eps) travel in the op's `data` map, so one kernel per (op, rank) is compiled, whatever the shape.
"""

from __future__ import annotations

import jittor as jt

from . import mkl

__all__ = [
    "enabled", "group_norm", "layer_norm", "geglu", "exp_shifted", "attention", "attention_blocks", "PARALLEL_MIN",
]

_HEADER = "#include <algorithm>\n#include <cmath>\n#include <vector>\n"
# A loop over fewer elements stays on one thread. A parallel region costs microseconds on idle cores but a
# scheduler slice (~8 ms, measured) whenever another process holds a core; a single-thread fused loop already
# beats Jittor's expressions by 2-10x on the norms (bench/kernels.py), so only large tensors are split.
PARALLEL_MIN = 1 << 21


def _code(shapes: list, inputs: list[jt.Var], src: str, **data: float) -> list[jt.Var]:
    """jt.code with float32 outputs of `shapes`; `data` (and PARALLEL_MIN) reach the source as data["name"]."""
    data["parallel_min"] = float(PARALLEL_MIN)
    return jt.code(shapes, ["float32"] * len(shapes), inputs, cpu_header=_HEADER,
                   cpu_src='const index_t PARALLEL_MIN = data["parallel_min"];\n' + src, data=data)


def enabled(x: jt.Var) -> bool:
    """The kernels apply: a float32 Var on CPU (jt.flags.use_cuda == 0)."""
    return not jt.flags.use_cuda and x.dtype == "float32"


# --------------------------------------------------------------------------------------------------- GroupNorm
# x [B, C, S]; per (b, g): mean = E[x], var = E[(x - mean)^2] (two passes, as GroupNorm's expression),
# y = (x - mean) * rstd * w + b, optionally z = y * sigmoid(y) (the ResNet's SiLU, fused).
_GN_FWD = """
const index_t B = in0_shape0, C = in0_shape1, S = in0_shape2;
const index_t G = out1_shape1, cg = C / G;
const float eps = data["eps"];
const bool act = data["silu"] != 0;
#pragma omp parallel for schedule(dynamic, 1) if (B * C * S >= PARALLEL_MIN)
for (index_t t = 0; t < B * G; t++) {
    const index_t bi = t / G, gi = t % G;
    const float* x = in0_p + (bi * C + gi * cg) * S;
    float* y = out0_p + (bi * C + gi * cg) * S;
    const index_t n = cg * S;
    double s = 0;
    for (index_t c = 0; c < cg; c++) {
        float sc = 0;
        for (index_t i = 0; i < S; i++) sc += x[c * S + i];
        s += sc;
    }
    const float mean = (float)(s / n);
    double v = 0;
    for (index_t c = 0; c < cg; c++) {
        float vc = 0;
        for (index_t i = 0; i < S; i++) { float d = x[c * S + i] - mean; vc += d * d; }
        v += vc;
    }
    const float rstd = 1.0f / std::sqrt((float)(v / n) + eps);
    out1_p[t] = mean;
    out2_p[t] = rstd;
    for (index_t c = 0; c < cg; c++) {
        const float k = rstd * in1_p[gi * cg + c], m = in2_p[gi * cg + c] - mean * k;
        const float* xc = x + c * S;
        float* yc = y + c * S;
        if (act) {
            for (index_t i = 0; i < S; i++) { float u = xc[i] * k + m; yc[i] = u / (1.0f + std::exp(-u)); }
        } else {
            for (index_t i = 0; i < S; i++) yc[i] = xc[i] * k + m;
        }
    }
}
"""

# inputs x, w, b, mean, rstd, dz; outputs dx [B, C, S], dw_b [B, C] = sum_s dy xhat, db_b [B, C] = sum_s dy.
# dy = dz (or dz * s (1 + u (1 - s)), s = sigmoid(u), through the SiLU); with g = dy * w over the group:
# dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). dy is kept in dx's buffer between the two passes.
_GN_BWD = """
const index_t B = in0_shape0, C = in0_shape1, S = in0_shape2;
const index_t G = in3_shape1, cg = C / G;
const bool act = data["silu"] != 0;
#pragma omp parallel for schedule(dynamic, 1) if (B * C * S >= PARALLEL_MIN)
for (index_t t = 0; t < B * G; t++) {
    const index_t bi = t / G, gi = t % G, c0 = gi * cg;
    const float mean = in3_p[t], rstd = in4_p[t];
    const index_t n = cg * S;
    double a1 = 0, a2 = 0;
    for (index_t c = 0; c < cg; c++) {
        const index_t off = (bi * C + c0 + c) * S;
        const float* x = in0_p + off;
        const float* dz = in5_p + off;
        float* dy = out0_p + off;
        const float w = in1_p[c0 + c];
        float s1 = 0, s2 = 0;
        if (act) {
            const float k = rstd * w, m = in2_p[c0 + c] - mean * k;
            for (index_t i = 0; i < S; i++) {
                float u = x[i] * k + m, sg = 1.0f / (1.0f + std::exp(-u));
                float d = dz[i] * sg * (1.0f + u * (1.0f - sg));
                dy[i] = d;
                s1 += d * (x[i] - mean);
                s2 += d;
            }
        } else {
            for (index_t i = 0; i < S; i++) { float d = dz[i]; dy[i] = d; s1 += d * (x[i] - mean); s2 += d; }
        }
        s1 *= rstd;
        out1_p[bi * C + c0 + c] = s1;
        out2_p[bi * C + c0 + c] = s2;
        a1 += (double)w * s2;
        a2 += (double)w * s1;
    }
    const float m1 = (float)(a1 / n), m2 = (float)(a2 / n);
    for (index_t c = 0; c < cg; c++) {
        const index_t off = (bi * C + c0 + c) * S;
        const float* x = in0_p + off;
        float* dx = out0_p + off;
        const float w = in1_p[c0 + c];
        for (index_t i = 0; i < S; i++) {
            float xh = (x[i] - mean) * rstd;
            dx[i] = rstd * (dx[i] * w - m1 - xh * m2);
        }
    }
}
"""


class _GroupNorm(jt.Function):
    def __init__(self, groups: int, eps: float, act: bool):
        self.groups, self.data = groups, {"eps": float(eps), "silu": float(act)}

    def execute(self, x: jt.Var, weight: jt.Var, bias: jt.Var) -> jt.Var:
        b, c = x.shape[:2]
        x3 = x.reshape(b, c, -1)
        y, mean, rstd = _code([x3.shape, (b, self.groups), (b, self.groups)], [x3, weight, bias], _GN_FWD,
                              **self.data)
        self.saved = (x3, weight, bias, mean, rstd)
        self.shape = x.shape
        return y.reshape(x.shape)

    def grad(self, dz: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var]:
        x3, weight, bias, mean, rstd = self.saved
        b, c = x3.shape[:2]
        dx, dw, db = _code([x3.shape, (b, c), (b, c)], [x3, weight, bias, mean, rstd, dz.reshape(x3.shape)],
                           _GN_BWD, **self.data)
        return dx.reshape(self.shape), dw.sum(0), db.sum(0)


def group_norm(x: jt.Var, groups: int, weight: jt.Var, bias: jt.Var, eps: float, act: bool = False) -> jt.Var:
    """GroupNorm of float32 x [B, C, ...] with affine weight/bias [C]; `act`: followed by SiLU (fused)."""
    return _GroupNorm(groups, eps, act)(x, weight, bias)


# --------------------------------------------------------------------------------------------------- LayerNorm
# x [R, D]; per row: mean, var = E[(x - mean)^2], y = (x - mean) * rstd * w + b.
_LN_FWD = """
const index_t R = in0_shape0, D = in0_shape1;
const float eps = data["eps"];
#pragma omp parallel for schedule(static) if (R * in0_shape1 >= PARALLEL_MIN)
for (index_t r = 0; r < R; r++) {
    const float* x = in0_p + r * D;
    float* y = out0_p + r * D;
    float s = 0;
    for (index_t i = 0; i < D; i++) s += x[i];
    const float mean = s / D;
    float v = 0;
    for (index_t i = 0; i < D; i++) { float d = x[i] - mean; v += d * d; }
    const float rstd = 1.0f / std::sqrt(v / D + eps);
    out1_p[r] = mean;
    out2_p[r] = rstd;
    for (index_t i = 0; i < D; i++) y[i] = (x[i] - mean) * rstd * in1_p[i] + in2_p[i];
}
"""

# inputs x, w, mean, rstd, dy; outputs dx [R, D], partial dw, db [P, D] over P row chunks (summed by Jittor).
# g = dy * w: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw = sum_r dy xhat, db = sum_r dy.
_LN_BWD = """
const index_t R = in0_shape0, D = in0_shape1, P = out1_shape0;
#pragma omp parallel for schedule(static) if (R * D >= PARALLEL_MIN)
for (index_t p = 0; p < P; p++) {
    float* dw = out1_p + p * D;
    float* db = out2_p + p * D;
    for (index_t i = 0; i < D; i++) { dw[i] = 0; db[i] = 0; }
    for (index_t r = p * R / P; r < (p + 1) * R / P; r++) {
        const float* x = in0_p + r * D;
        const float* dy = in4_p + r * D;
        float* dx = out0_p + r * D;
        const float mean = in2_p[r], rstd = in3_p[r];
        float a1 = 0, a2 = 0;
        for (index_t i = 0; i < D; i++) {
            float xh = (x[i] - mean) * rstd, g = dy[i] * in1_p[i];
            a1 += g;
            a2 += g * xh;
            dw[i] += dy[i] * xh;
            db[i] += dy[i];
        }
        a1 /= D;
        a2 /= D;
        for (index_t i = 0; i < D; i++) {
            float xh = (x[i] - mean) * rstd;
            dx[i] = rstd * (dy[i] * in1_p[i] - a1 - xh * a2);
        }
    }
}
"""
_LN_CHUNKS = 16  # row chunks of the weight gradient: enough for 16 threads, a small [16, D] sum after


class _LayerNorm(jt.Function):
    def __init__(self, eps: float):
        self.data = {"eps": float(eps)}

    def execute(self, x: jt.Var, weight: jt.Var, bias: jt.Var) -> jt.Var:
        d = x.shape[-1]
        x2 = x.reshape(-1, d)
        y, mean, rstd = _code([x2.shape, (x2.shape[0],), (x2.shape[0],)], [x2, weight, bias], _LN_FWD, **self.data)
        self.saved, self.shape = (x2, weight, mean, rstd), x.shape
        return y.reshape(x.shape)

    def grad(self, dy: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var]:
        x2, weight, mean, rstd = self.saved
        p = min(_LN_CHUNKS, x2.shape[0])
        dx, dw, db = _code([x2.shape, (p, x2.shape[1]), (p, x2.shape[1])],
                           [x2, weight, mean, rstd, dy.reshape(x2.shape)], _LN_BWD)
        return dx.reshape(self.shape), dw.sum(0), db.sum(0)


def layer_norm(x: jt.Var, weight: jt.Var, bias: jt.Var, eps: float) -> jt.Var:
    """LayerNorm of float32 x [..., D] over its last axis, affine weight/bias [D]."""
    return _LayerNorm(eps)(x, weight, bias)


# ------------------------------------------------------------------------------------------------------ GEGLU
# GEGLU on p [R, 2H] = [h | gate]: out = h * gelu(gate); d h = dy gelu(gate), d gate = dy h gelu'(gate).
_GEGLU_FWD = """
const index_t R = in0_shape0, H = out0_shape1;
#pragma omp parallel for schedule(static) if (R * in0_shape1 >= PARALLEL_MIN)
for (index_t r = 0; r < R; r++) {
    const float* h = in0_p + r * 2 * H;
    const float* g = h + H;
    float* y = out0_p + r * H;
    for (index_t i = 0; i < H; i++) y[i] = h[i] * 0.5f * g[i] * (1.0f + std::erf(g[i] * 0.70710678f));
}
"""
_GEGLU_BWD = """
const index_t R = in0_shape0, H = in1_shape1;
#pragma omp parallel for schedule(static) if (R * in0_shape1 >= PARALLEL_MIN)
for (index_t r = 0; r < R; r++) {
    const float* h = in0_p + r * 2 * H;
    const float* g = h + H;
    const float* dy = in1_p + r * H;
    float* dh = out0_p + r * 2 * H;
    float* dg = dh + H;
    for (index_t i = 0; i < H; i++) {
        float u = g[i], phi = 0.5f * (1.0f + std::erf(u * 0.70710678f));
        dh[i] = dy[i] * u * phi;
        dg[i] = dy[i] * h[i] * (phi + u * 0.39894228f * std::exp(-0.5f * u * u));
    }
}
"""


class _GEGLU(jt.Function):
    def execute(self, p: jt.Var) -> jt.Var:
        self.p = p.reshape(-1, p.shape[-1])
        shape = (*p.shape[:-1], p.shape[-1] // 2)
        y = _code([(self.p.shape[0], p.shape[-1] // 2)], [self.p], _GEGLU_FWD)[0]
        self.shape = p.shape
        return y.reshape(shape)

    def grad(self, dy: jt.Var) -> jt.Var:
        dp = _code([self.p.shape], [self.p, dy.reshape(self.p.shape[0], -1)], _GEGLU_BWD)[0]
        return dp.reshape(self.shape)


def geglu(p: jt.Var) -> jt.Var:
    """h * gelu(gate) of a float32 p [..., 2H] = [h | gate] (diffusers' GEGLU after its projection)."""
    return _GEGLU()(p)


# ------------------------------------------------------------------------------------------- softmax's exp
# s [R, M]: e = exp(s - max_row(s)) (the max treated as a constant, as in softmax); d s = d e * e.
_EXP_FWD = """
const index_t R = in0_shape0, M = in0_shape1;
#pragma omp parallel for schedule(static) if (R * in0_shape1 >= PARALLEL_MIN)
for (index_t r = 0; r < R; r++) {
    const float* s = in0_p + r * M;
    float* e = out0_p + r * M;
    float m = s[0];
    for (index_t i = 1; i < M; i++) m = s[i] > m ? s[i] : m;
    for (index_t i = 0; i < M; i++) e[i] = std::exp(s[i] - m);
}
"""
_EXP_BWD = """
const index_t n = in0->num;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
for (index_t i = 0; i < n; i++) out0_p[i] = in0_p[i] * in1_p[i];
"""


class _ExpShifted(jt.Function):
    def execute(self, s: jt.Var) -> jt.Var:
        self.e = _code([s.shape], [s], _EXP_FWD)[0]
        return self.e

    def grad(self, de: jt.Var) -> jt.Var:
        return _code([self.e.shape], [self.e, de], _EXP_BWD)[0]


def exp_shifted(scores: jt.Var) -> jt.Var:
    """exp(s - max(s)) along the last axis of float32 scores [R, M] (softmax's numerator, shift-free)."""
    return _ExpShifted()(scores)


# ------------------------------------------------------------------------------------------ small attention
# softmax(s Q K^T + mask) V in one pass per query row, for inference on short key sequences (CLIP's 77 tokens):
# q [B, H, N, D], k [Bk, Hk, M, D], v [Bk, Hk, M, E], mask [Bm, Hm, Nm, M] (a batch, head or row of 1 broadcasts).
# Row by row: scores s_j = (s q) . k_j (+ mask_j), e_j = exp(s_j - max s), out = sum_j e_j v_j / sum_j e_j.
_ATTN_FWD = """
const index_t B = in0_shape0, H = in0_shape1, N = in0_shape2, D = in0_shape3;
const index_t BK = in1_shape0, HK = in1_shape1, M = in1_shape2, E = in2_shape3;
const float scale = data["scale"];
MASK_SHAPE
#pragma omp parallel if (B * H * N * M * (D + E) >= PARALLEL_MIN)
{
    std::vector<float> sbuf(M), qbuf(D);
    float* s = sbuf.data();
    float* qs = qbuf.data();
    #pragma omp for schedule(static)
    for (index_t t = 0; t < B * H * N; t++) {
        const index_t b = t / (H * N), h = (t / N) % H, n = t % N;
        const index_t kv = (std::min(b, BK - 1) * HK + std::min(h, HK - 1)) * M;
        const float* kh = in1_p + kv * D;
        const float* vh = in2_p + kv * E;
        const float* q = in0_p + t * D;
        for (index_t c = 0; c < D; c++) qs[c] = q[c] * scale;
        float top = -3.4e38f;
        for (index_t j = 0; j < M; j++) {
            const float* kj = kh + j * D;
            float acc = 0;
            #pragma omp simd reduction(+:acc)
            for (index_t c = 0; c < D; c++) acc += qs[c] * kj[c];
            s[j] = acc;
        }
        MASK_ADD
        for (index_t j = 0; j < M; j++) top = s[j] > top ? s[j] : top;
        float sum = 0;
        for (index_t j = 0; j < M; j++) { s[j] = std::exp(s[j] - top); sum += s[j]; }
        float* o = out0_p + t * E;
        for (index_t c = 0; c < E; c++) o[c] = 0;
        for (index_t j = 0; j < M; j++) {
            const float e = s[j];
            const float* vj = vh + j * E;
            #pragma omp simd
            for (index_t c = 0; c < E; c++) o[c] += e * vj[c];
        }
        const float inv = 1.0f / sum;
        for (index_t c = 0; c < E; c++) o[c] *= inv;
    }
}
"""
_ATTN_MASK = {
    "MASK_SHAPE": "const index_t BM = in3_shape0, HM = in3_shape1, NM = in3_shape2;",
    "MASK_ADD": "const float* mr = in3_p + ((std::min(b, BM - 1) * HM + std::min(h, HM - 1)) * NM\n"
                "            + std::min(n, NM - 1)) * M;\n"
                "        for (index_t j = 0; j < M; j++) s[j] += mr[j];",
}


def attention(query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None) -> jt.Var:
    """softmax(scale * Q K^T + mask) V of float32 [B, heads, N, d] inputs in one kernel, without a gradient;
    K / V and the 4-D mask broadcast from a batch or head of 1, the mask also from a row of 1."""
    inputs = [query, key, value] + ([] if mask is None else [mask])
    shape = (*query.shape[:3], value.shape[-1])
    src = _ATTN_FWD
    for token, line in _ATTN_MASK.items():
        src = src.replace(token, line if mask is not None else "")
    out = _code([shape], inputs, src, scale=float(scale))[0]
    return out.stop_grad()


# ------------------------------------------------------------------------------------ large attention (MKL)
# The same softmax(s Q K^T) V for long sequences (the UNet's self-attention), without a mask: each OpenMP task
# takes one (batch, head) and a block of ROWS query rows, S = s Q_blk K^T by one MKL sgemm into its own
# [ROWS, M] buffer (which stays in cache), e = exp(S - row max) with the row sums l, O = e V by a second sgemm,
# then O / l. MKL runs single-threaded inside the parallel region; the tasks split the cores.
_ATTN_BLOCKS = """
const int B = in0_shape0, H = in0_shape1, N = in0_shape2, D = in0_shape3;
const int BK = in1_shape0, HK = in1_shape1, M = in1_shape2, E = in2_shape3;
const float scale = data["scale"];
const int R = ROWS, blocks = (N + R - 1) / R;
#pragma omp parallel
{
    std::vector<float> sbuf((size_t)R * M), lbuf(R);
    #pragma omp for schedule(dynamic)
    for (long t = 0; t < (long)B * H * blocks; t++) {
        const int bh = t / blocks, r0 = (t % blocks) * R, rows = std::min(R, N - r0);
        const int b = bh / H, h = bh % H;
        const long kv = ((long)std::min(b, BK - 1) * HK + std::min(h, HK - 1)) * M;
        const float* q = in0_p + ((long)bh * N + r0) * D;
        float* s = sbuf.data();
        float* o = out0_p + ((long)bh * N + r0) * E;
        cblas_sgemm(101, 111, 112, rows, M, D, scale, q, D, in1_p + kv * D, D, 0.f, s, M);
        for (int i = 0; i < rows; i++) {
            float* si = s + (long)i * M;
            float top = -3.4e38f, sum = 0.f;
            for (int j = 0; j < M; j++) top = si[j] > top ? si[j] : top;
            for (int j = 0; j < M; j++) { si[j] = std::exp(si[j] - top); sum += si[j]; }
            lbuf[i] = 1.f / sum;
        }
        cblas_sgemm(101, 111, 111, rows, E, M, 1.f, s, M, in2_p + kv * E, E, 0.f, o, E);
        for (int i = 0; i < rows; i++)
            for (int c = 0; c < E; c++) o[(long)i * E + c] *= lbuf[i];
    }
}
"""
ATTENTION_ROWS = 64  # query rows a task: its [64, M] scores stay in L2 up to M = 4096 (SD at 512 px: 1 MB)


def attention_blocks(query: jt.Var, key: jt.Var, value: jt.Var, scale: float) -> jt.Var:
    """softmax(scale * Q K^T) V of float32 [B, heads, N, d] inputs by MKL GEMMs on blocks of query rows, without
    a mask or a gradient (jstyle.mkl.available() must hold); K / V broadcast from a batch or head of 1."""
    shape = (*query.shape[:3], value.shape[-1])
    out = jt.code(shape, "float32", [query, key, value], cpu_header=_HEADER + mkl.CBLAS_HEADER,
                  cpu_src=_ATTN_BLOCKS.replace("ROWS", str(ATTENTION_ROWS)), data={"scale": float(scale)})
    return out.stop_grad()
