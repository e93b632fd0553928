/* LayerAct forward and backward on CPU: one fused pass per sample, in float32, bfloat16 or float16.
 *
 * Each sample ("row") of L values is laid out either
 *   planar:      [C][inner]  (contiguous tensors; per-channel parameters are scalars in a span)
 *   interleaved: [outer][C]  (channels_last, or the channel dim last; parameters vary along a span)
 * Without an affine the row is one planar channel (C = 1, weight 1, bias 0).
 *
 * A sample's statistics are taken and then applied while its slice is still in cache, so the
 * kernel moves the same bytes as SiLU. Samples run in parallel; when there are fewer samples
 * than threads and they are large, each sample is cut into chunks instead (two parallel phases).
 * Sums are taken in float over short blocks (vectorised) and carried in double across blocks;
 * the variance uses sums shifted by the sample's first value, so a large mean cannot cancel it,
 * and a block whose float sums overflow (values of 1e19 and more) is summed again in double, so
 * the statistics of any finite sample are finite.
 *
 * Half precision: statistics and all arithmetic stay in float32, only loads and stores change.
 * The forward's apply and the backward's pass 2 convert a tile at a time on the stack and run the
 * float32 loops on it (bfloat16 stores use AVX512-BF16's vcvtneps2bf16 where the CPU has it, see
 * store_tile; float16 uses F16C where the compiler offers it). The statistics and the backward's
 * pass 1 read bfloat16 inside their loops, where widening is a shift the compiler vectorises
 * along with the arithmetic; float16 reaches pass 1 as tiles too. Affine parameters and their
 * gradients are always float32.
 *
 * Built with -ffinite-math-only (clamps become min/max, about 20% faster), so NaN and inf are
 * handled explicitly: a sample whose statistics are not finite (it holds a NaN or inf) gets NaN
 * outputs and gradients, as the plain formula gives.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if !defined(LAYERACT_PORTABLE) && (defined(__F16C__) || defined(__AVX512BF16__))
#include <immintrin.h>
#endif
#if !defined(LAYERACT_PORTABLE) && defined(__AVX512BF16__) && defined(__AVX512F__)
#define NATIVE_BF16 1       /* the CPU converts float to bfloat16 itself (vcvtneps2bf16) */
#endif

#define SILU 0
#define HARDSILU 1
#define GELU 2              /* s = Phi(z), the standard normal CDF */
#define GELU_TANH 3         /* s = Phi's tanh form, sigmoid(z (A + B z^2)) */
#define GELU_BF16 4         /* GELU on bfloat16 data: Phi to bfloat16's precision (see normal_cdf); internal */
#define F32 0
#define BF16 1
#define F16 2
#define BLOCK 4096          /* floats summed in float before the sum moves to double */
#define LANES 32            /* partial sums kept apart in a float sum (four AVX registers) */
#define TILE 1024           /* half-precision values converted to float at a time (4 KiB on the stack) */
#define CHUNK_MIN 32768     /* a sample must be this large before it is cut into chunks */
#define PARALLEL_MIN 16384  /* below this many elements in all, threads cost more than they save */
#define INLINE static inline __attribute__((always_inline))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* The compiler and flags of this build, as cpu_kernel.py passes them in (the benchmarks print them). */
#ifndef LAYERACT_BUILD_FLAGS
#define LAYERACT_BUILD_FLAGS "unknown"
#endif
const char *layeract_build_flags(void) { return LAYERACT_BUILD_FLAGS; }

/* ---------------------------------------------------------------- half precision <-> float */

INLINE float float_of_bits(uint32_t bits) {
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

INLINE uint32_t bits_of_float(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

/* bfloat16 is the top half of a float32: widening is exact. */
INLINE float bf16_to_float(uint16_t h) { return float_of_bits((uint32_t)h << 16); }

/* Round to nearest even; NaN stays a (quiet) NaN instead of rounding into inf. */
INLINE uint16_t float_to_bf16(float v) {
    uint32_t u = bits_of_float(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* float16 -> float, exact: normals rebias the exponent, subnormals are m * 2^-24. */
INLINE float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em >= 0x7c00u) return float_of_bits(sign | 0x7f800000u | ((em & 0x3ffu) << 13));  /* inf, NaN */
    if (em >= 0x0400u) return float_of_bits(sign | ((em << 13) + ((127u - 15u) << 23)));
    return float_of_bits(sign | bits_of_float((float)em * 5.9604644775390625e-8f));
}

/* float -> float16 rounding to nearest even (F. Giesen's float_to_half_fast3_rtne): too large
 * becomes inf; a subnormal result is rounded by the float adder against a magic constant. */
INLINE uint16_t float_to_f16(float v) {
    uint32_t u = bits_of_float(v), sign = (u >> 16) & 0x8000u, o;
    u &= 0x7fffffffu;
    if (u >= (127u + 16u) << 23) {
        o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 113u << 23) {
        const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
        o = bits_of_float(float_of_bits(u) + float_of_bits(magic)) - magic;
    } else {
        o = (u + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
    }
    return (uint16_t)(o | sign);
}

/* dst[0, n) = float of the dtype's values src[offset, offset + n).
 * The next n values are prefetched: the tile's arithmetic then overlaps their loads, which the
 * hardware prefetcher would not start while no load of this stream is issued. (A prefetch past
 * the end of the tensor is harmless: prefetches never fault.) */
static void load_tile(const void *src, int64_t offset, int64_t n, float *restrict dst, int dtype) {
    const uint16_t *h = (const uint16_t *)src + offset;
    int64_t i = 0;
    for (int64_t byte = 0; byte < n * 2; byte += 64) __builtin_prefetch((const char *)(h + n) + byte);
    if (dtype == BF16) {
        for (; i < n; ++i) dst[i] = bf16_to_float(h[i]);
        return;
    }
#if !defined(LAYERACT_PORTABLE) && defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; ++i) dst[i] = f16_to_float(h[i]);
}

/* dst[offset, offset + n) = the dtype's values of src[0, n), rounded to nearest even. */
static void store_tile(const float *restrict src, void *dst, int64_t offset, int64_t n, int dtype) {
    uint16_t *h = (uint16_t *)dst + offset;
    int64_t i = 0;
    if (dtype == BF16) {
#ifdef NATIVE_BF16
        /* vcvtneps2bf16 rounds to nearest even and quiets a NaN exactly as float_to_bf16 does, in one
         * instruction instead of the ~7 that float_to_bf16 vectorises to, but it flushes subnormal inputs to
         * zero: a group holding one is converted by float_to_bf16 instead. */
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1);
        const __m512i subnormal_top = _mm512_set1_epi32(0x007fffff);
        for (; i + 16 <= n; i += 16) {
            __m512 v = _mm512_loadu_ps(src + i);
            __m512i below = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), magnitude), one);
            if (_mm512_cmplt_epu32_mask(below, subnormal_top)) {  /* |v| - 1 < 2^23 - 1: 0 < |v| < 2^-126 */
                for (int64_t j = i; j < i + 16; ++j) h[j] = float_to_bf16(src[j]);
            } else {
                _mm256_storeu_si256((__m256i *)(h + i), (__m256i)_mm512_cvtneps_pbh(v));
            }
        }
#endif
        for (; i < n; ++i) h[i] = float_to_bf16(src[i]);
        return;
    }
#if !defined(LAYERACT_PORTABLE) && defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; ++i) h[i] = float_to_f16(src[i]);
}

/* Exported for the tests: the conversions the kernel uses, on n values. */
void layeract_to_float(const void *src, float *dst, int64_t n, int dtype) {
    for (int64_t i = 0; i < n; i += TILE) load_tile(src, i, MIN(TILE, n - i), dst + i, dtype);
}

void layeract_from_float(const float *src, void *dst, int64_t n, int dtype) {
    for (int64_t i = 0; i < n; i += TILE) store_tile(src + i, dst, i, MIN(TILE, n - i), dtype);
}

/* Element access in the hot loops, for float32 and bfloat16 (dt a constant there; float16 and
 * other data reach the loops as float32 tiles). */
INLINE float ld(const void *p, int64_t i, int dt) {
    return dt == BF16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

INLINE void st(void *p, int64_t i, float v, int dt) {
    if (dt == BF16) ((uint16_t *)p)[i] = float_to_bf16(v);
    else ((float *)p)[i] = v;
}

INLINE const void *at(const void *p, int64_t i, int dt) { return (const char *)p + i * (dt == BF16 ? 2 : 4); }
INLINE void *at_mut(void *p, int64_t i, int dt) { return (char *)p + i * (dt == BF16 ? 2 : 4); }

/* ---------------------------------------------------------------- scalar helpers */

/* exp(t) for t in [-80, 80]: Cephes' expf polynomial on a range-reduced argument, written so
 * the compiler vectorises it (libm's expf would stay scalar without -ffast-math). `coarse` (a
 * constant where it is used) takes the Taylor polynomial of degree 5 instead: relative error
 * 2.4e-6 instead of float32's, two multiply-adds fewer (see normal_cdf). */
INLINE float exp_of(float t, int coarse) {
    float k = __builtin_floorf(t * 1.44269504088896341f + 0.5f);
    float r = t - k * 0.693359375f + k * 2.12194440e-4f, p;
    if (coarse) {
        p = 1.0f / 120.0f;
        p = p * r + 1.0f / 24.0f;
        p = p * r + 1.0f / 6.0f;
        p = p * r + 0.5f;
    } else {
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
    }
    p = p * r * r + r + 1.0f;
    return p * float_of_bits((uint32_t)((int32_t)k + 127) << 23);
}

INLINE float exp_approx(float t) { return exp_of(t, 0); }

/* Whether v is finite, read from its bits: -ffinite-math-only lets the compiler fold isfinite() away. */
static int finite_bits(float v) {
    return (bits_of_float(v) & 0x7f800000u) != 0x7f800000u;
}

static void fill_nan(float *p, int64_t n) {
    float nan = float_of_bits(0x7fc00000u);
    for (int64_t i = 0; i < n; ++i) p[i] = nan;
}

/* Clamps written as comparisons: fminf/fmaxf keep NaN rules that stop vectorisation. */
INLINE float clamp(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* sigmoid(z); the clamp keeps exp's result a normal float. */
INLINE float sigmoid(float z) {
    return 1.0f / (1.0f + exp_approx(clamp(-z, -80.0f, 80.0f)));
}

/* Phi(z) = erfc(-z / sqrt 2) / 2 from one exp shared with the density: for a = |z| / sqrt 2,
 * erfc(a) / 2 = e t Q(t), e = exp(-a^2), t = 1 / (1 + a / 2), Q a degree-8 polynomial fitted to
 * erfc(a) exp(a^2) / (2 t) over the range used (relative error below 4e-8 in exact arithmetic, 2e-7
 * evaluated in float), so Phi keeps its relative accuracy far into the lower tail, where 1 + erf would
 * cancel; erfc(-a) = 2 - erfc(a). *ds = Phi'(z) = e / sqrt(2 pi) reuses e: backward pays one exp, as
 * SiLU's does (Numerical Recipes' erfcc, used before, hides e inside exp(-a^2 + P(t)) and needed a
 * second exp for the density). |z| is capped at 12 (Phi(-12) = 2e-33) to keep exp's argument in range.
 * Q is tools/fit_normal_cdf.py's output (tests/test_kernels.py checks that the code holds it).
 *
 * `bf16` (a constant where it is used) computes Phi to bfloat16's precision instead, for bfloat16 data,
 * whose results keep 8 significant bits (a step of up to 2^-7 relative): Q of degree 5 (relative error
 * 2.2e-5, tools/fit_normal_cdf.py --degree 5) and exp's coarse polynomial (2.4e-6). A result then differs
 * from float32 arithmetic's rounded one in a few values in 10,000, by one bfloat16 step, so it stays within
 * one step of the exact value, far into the lower tail as before (tests/test_kernels.py). It saves five of
 * the about 40 vector operations a value costs: LA-GELU's bfloat16 kernels took 4-8% less time
 * (docs/results/speed/README.md). float16, with 3 more bits, keeps the float32 Phi. */
INLINE float normal_cdf(float z, float *ds, int bf16) {
    float a = clamp(z < 0.0f ? -z : z, 0.0f, 12.0f) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * a), q;
    if (bf16) {
        q = -2.544236183e-02f;
        q = q * t - 1.556954812e-02f;
        q = q * t + 1.644954383e-01f;
        q = q * t + 8.756025881e-02f;
        q = q * t + 1.484606862e-01f;
        q = q * t + 1.404846609e-01f;
    } else {
        q = -2.914332785e-02f;
        q = q * t + 1.403630525e-01f;
        q = q * t - 2.395766079e-01f;
        q = q * t + 1.343787760e-01f;
        q = q * t - 1.006373577e-02f;
        q = q * t + 9.994714707e-02f;
        q = q * t + 1.219113767e-01f;
        q = q * t + 1.411371231e-01f;
        q = q * t + 1.410461664e-01f;
    }
    float e = exp_of(-a * a, bf16);
    float half_erfc = t * q * e;
    *ds = 0.39894228040143268f * e;  /* exp(-z^2 / 2) / sqrt(2 pi) */
    return z < 0.0f ? half_erfc : 1.0f - half_erfc;
}

/* GELU's tanh form: (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) / 2 = sigmoid(z (A + B z^2)), A = 2 sqrt(2/pi),
 * B = 0.044715 A, and ds/dz = s (1 - s) (A + 3 B z^2). Beyond |z| = 100, s is 0 or 1 and z^3 would overflow. */
#define TANH_A 1.5957691216057308f
#define TANH_B 0.071354816197f
INLINE float tanh_cdf(float z, float *ds) {
    z = clamp(z, -100.0f, 100.0f);
    float z2 = z * z, s = sigmoid(z * (TANH_A + TANH_B * z2));
    *ds = s * (1.0f - s) * (TANH_A + 3.0f * TANH_B * z2);
    return s;
}

/* s'(z) as one value: every s' here is in [0, 1/2], but a product with factors above 1 (A + 3B z^2, exp's
 * mantissa), and -fassociative-math lets the compiler multiply g x by such a factor first, which overflows
 * for x near float32's limit. A clamp is no product, so g x s' stays one multiplication. (GCC's
 * __builtin_assoc_barrier does not survive its vectoriser.) */
INLINE float whole(float slope) { return clamp(slope, 0.0f, 1.0f); }

/* s(z) and ds/dz of the smooth kinds (SiLU and both GELU forms); the compiler drops ds where it is unused. */
INLINE float smooth_scale(float z, int kind, float *ds) {
    if (kind == GELU || kind == GELU_BF16) return normal_cdf(z, ds, kind == GELU_BF16);
    if (kind == GELU_TANH) return tanh_cdf(z, ds);
    float s = sigmoid(z);
    *ds = s * (1.0f - s);
    return s;
}

/* s of any kind, from v = z (smooth kinds) or u = z / 6 + 1/2 (HardSiLU, see coef_for). */
INLINE float scale_of(float v, int kind) {
    float unused;
    return kind == HARDSILU ? clamp(v, 0.0f, 1.0f) : smooth_scale(v, kind, &unused);
}

/* HardSiLU is computed from u = z / 6 + 1/2, whose coefficients fold into those of z:
 * s = clamp(u, 0, 1) and ds/dz = 1/6 where 0 < u < 1 (-3 < z < 3). */
typedef struct { float a, c; } Coef;  /* z (or u) = a t + c */

INLINE Coef coef_for(float a, float c, int kind) {
    Coef k = {a, c};
    if (kind == HARDSILU) { k.a = a * (1.0f / 6.0f); k.c = c * (1.0f / 6.0f) + 0.5f; }
    return k;
}

typedef struct {
    const float *w, *b;     /* per-channel affine, or NULL */
    int64_t rows, len;      /* samples and values per sample */
    int64_t channels, inner;/* planar when inner > 1 or no affine; interleaved when inner == 1 */
    int planar;
    int dtype;              /* F32, BF16 or F16: the element type of x, y, g and dx */
} Layout;

static Layout make_layout(const float *w, const float *b, int64_t rows, int64_t len, int64_t channels, int64_t inner,
                          int dtype) {
    Layout lay = {w, b, rows, len, channels, inner, 1, dtype};
    if (w == NULL) {
        lay.channels = 1;
        lay.inner = len;
    } else if (inner == 1 && channels > 1) {
        lay.planar = 0;
    }
    return lay;
}

/* The first value of sample r, in float: the shift of its sums. */
static float first_value(const Layout *L, const void *x, int64_t r) {
    float v;
    if (L->dtype == F32) return ((const float *)x)[r * L->len];
    load_tile(x, r * L->len, 1, &v, L->dtype);
    return v;
}

/* ---------------------------------------------------------------- statistics */

/* Sums of (x - shift) and its square over x[0, n). LANES partial sums let the adds overlap
 * instead of waiting on one another. */
INLINE void shifted_sums(const void *x, int64_t n, float shift, double *s1, double *s2, int dt) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t end = MIN(start + BLOCK, n), i = start;
        float b1[LANES] = {0.0f}, b2[LANES] = {0.0f}, r1 = 0.0f, r2 = 0.0f;
        for (; i + LANES <= end; i += LANES) {
            for (int j = 0; j < LANES; ++j) {
                float d = ld(x, i + j, dt) - shift;
                b1[j] += d;
                b2[j] += d * d;
            }
        }
        for (; i < end; ++i) {
            float d = ld(x, i, dt) - shift;
            r1 += d;
            r2 += d * d;
        }
        for (int j = 0; j < LANES; ++j) {
            r1 += b1[j];
            r2 += b2[j];
        }
        if (finite_bits(r1) && finite_bits(r2)) {
            a1 += r1;
            a2 += r2;
        } else {  /* overflow in float (or a NaN/inf in x, which stays one in double) */
            for (i = start; i < end; ++i) {
                double d = (double)ld(x, i, dt) - (double)shift;
                a1 += d;
                a2 += d * d;
            }
        }
    }
    *s1 += a1;
    *s2 += a2;
}

/* Sums over values [lo, hi) of sample r (float16 converted a tile at a time). */
static void sample_sums(const Layout *L, const void *x, int64_t r, int64_t lo, int64_t hi, float shift,
                        double *s1, double *s2) {
    int64_t base = r * L->len;
    if (L->dtype == F32) {
        shifted_sums(at(x, base + lo, F32), hi - lo, shift, s1, s2, F32);
    } else if (L->dtype == BF16) {
        shifted_sums(at(x, base + lo, BF16), hi - lo, shift, s1, s2, BF16);
    } else {
        float tile[TILE];
        for (int64_t a = lo; a < hi; a += TILE) {
            int64_t n = MIN(TILE, hi - a);
            load_tile(x, base + a, n, tile, L->dtype);
            shifted_sums(tile, n, shift, s1, s2, F32);
        }
    }
}

static void finish_stats(double s1, double s2, int64_t len, float shift, float alpha, float *mean, float *rstd) {
    double d = s1 / (double)len;
    double var = s2 / (double)len - d * d;
    if (var < 0.0) var = 0.0;
    *mean = (float)(shift + d);
    *rstd = (float)(1.0 / sqrt(var + (double)alpha));
}

/* ---------------------------------------------------------------- forward
 *
 * Range functions work on values [lo, hi) of one sample: x and y point at value lo, and lo
 * itself says where in the channel pattern the range starts. */

/* y = x s(z) with z = a (x - mean) + c (a span of one channel, or a whole sample without an affine).
 * x - mean comes first: it is exact for x near the mean, so a mean far above the spread costs
 * no precision (x a - mean a would cancel). */
INLINE void forward_span(const void *restrict x, void *restrict y, int64_t n, float mean, float a, float c,
                         int kind, int dt) {
    Coef k = coef_for(a, c, kind);
    for (int64_t i = 0; i < n; ++i) {
        float xv = ld(x, i, dt), v = (xv - mean) * k.a + k.c;
        st(y, i, xv * scale_of(v, kind), dt);
    }
}

/* The same along (part of) one interleaved row, where the affine changes with every value. */
INLINE void forward_span_interleaved(const void *restrict x, void *restrict y, int64_t n, float mean, float rstd,
                                     const float *restrict w, const float *restrict b, int kind, int dt) {
    for (int64_t i = 0; i < n; ++i) {
        float xv = ld(x, i, dt), z = (xv - mean) * rstd * w[i] + b[i];
        st(y, i, xv * scale_of(kind == HARDSILU ? z * (1.0f / 6.0f) + 0.5f : z, kind), dt);
    }
}

INLINE void forward_range_of(const Layout *L, const void *x, void *y, int64_t lo, int64_t hi,
                             float mean, float rstd, int kind, int dt) {
    if (L->planar) {
        for (int64_t i = lo; i < hi;) {
            int64_t c = i / L->inner, end = MIN((c + 1) * L->inner, hi);
            float w = L->w ? L->w[c] : 1.0f, b = L->w ? L->b[c] : 0.0f;
            forward_span(at(x, i - lo, dt), at_mut(y, i - lo, dt), end - i, mean, rstd * w, b, kind, dt);
            i = end;
        }
    } else {
        for (int64_t i = lo, c = lo % L->channels; i < hi; c = 0) {
            int64_t n = MIN(L->channels - c, hi - i);
            forward_span_interleaved(at(x, i - lo, dt), at_mut(y, i - lo, dt), n, mean, rstd, L->w + c, L->b + c,
                                     kind, dt);
            i += n;
        }
    }
}

/* `kind` is made a constant here, outside the OpenMP bodies that gcc outlines before inlining: a kind
 * known only at run time would make the hot loop compute every scale function. x and y are float32
 * (half precision arrives as tiles, see forward_apply). */
static void forward_range(const Layout *L, const float *x, float *y, int64_t lo, int64_t hi, float mean, float rstd,
                          int kind) {
#define FORWARD(KIND) forward_range_of(L, x, y, lo, hi, mean, rstd, KIND, F32)
    if (kind == SILU) FORWARD(SILU);
    else if (kind == HARDSILU) FORWARD(HARDSILU);
    else if (kind == GELU) FORWARD(GELU);
    else if (kind == GELU_BF16) FORWARD(GELU_BF16);
    else FORWARD(GELU_TANH);
#undef FORWARD
}

/* The kind the loops compute for data of `dtype`: bfloat16's GELU gets its own Phi (see normal_cdf).
 * Built with -DLAYERACT_BF16_FULL_PHI, bfloat16 uses float32's (for benchmarks: --kernel-flags). */
INLINE int kind_for(int kind, int dtype) {
#ifdef LAYERACT_BF16_FULL_PHI
    (void)dtype;
    return kind;
#else
    return kind == GELU && dtype == BF16 ? GELU_BF16 : kind;
#endif
}

/* Apply the activation to values [lo, hi) of sample r, in the tensors' own dtype. */
static void forward_apply(const Layout *L, const void *x, void *y, int64_t r, int64_t lo, int64_t hi, float mean,
                          float rstd, int kind) {
    int64_t base = r * L->len;
    int finite = finite_bits(mean) && finite_bits(rstd);
    /* bfloat16 too goes through float tiles: its conversions then run as loops of their own (store_tile's
     * vcvtneps2bf16 where the CPU has it). On the Intel Xeon, in a throwaway timing of one sample in cache, the
     * forward of every kind took 15-20% less time than with the conversions inside the activation's loop. */
    if (finite && L->dtype == F32) {
        forward_range(L, (const float *)x + base + lo, (float *)y + base + lo, lo, hi, mean, rstd, kind);
        return;
    }
    float xt[TILE], yt[TILE];
    for (int64_t a = lo; a < hi; a += TILE) {
        int64_t n = MIN(TILE, hi - a);
        if (finite) {
            load_tile(x, base + a, n, xt, L->dtype);
            forward_range(L, xt, yt, a, a + n, mean, rstd, kind_for(kind, L->dtype));
        } else {
            fill_nan(yt, n);
        }
        if (L->dtype == F32) memcpy((float *)y + base + a, yt, (size_t)n * sizeof(float));
        else store_tile(yt, y, base + a, n, L->dtype);
    }
}

static void forward_all(const Layout *L, const void *x, void *y, float *mean, float *rstd, float alpha, int kind,
                        int threads) {
    int64_t len = L->len, rows = L->rows;
    int chunked = rows < threads && len >= CHUNK_MIN;
    int64_t chunks = chunked ? (threads + rows - 1) / rows : 1;
    double *part = chunked ? (double *)calloc((size_t)(rows * chunks * 2), sizeof(double)) : NULL;
    if (!part) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (rows * len >= PARALLEL_MIN && rows > 1)
        for (int64_t r = 0; r < rows; ++r) {
            float shift = first_value(L, x, r);
            double s1 = 0.0, s2 = 0.0;
            sample_sums(L, x, r, 0, len, shift, &s1, &s2);
            finish_stats(s1, s2, len, shift, alpha, &mean[r], &rstd[r]);
            forward_apply(L, x, y, r, 0, len, mean[r], rstd[r], kind);
        }
        return;
    }
    /* Few large samples: each is cut into `chunks` pieces, summed in parallel, then applied. */
    int64_t step = (len + chunks - 1) / chunks;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < rows * chunks; ++item) {
            int64_t r = item / chunks, lo = (item % chunks) * step, hi = MIN(lo + step, len);
            if (lo < hi) sample_sums(L, x, r, lo, hi, first_value(L, x, r), &part[2 * item], &part[2 * item + 1]);
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            double s1 = 0.0, s2 = 0.0;
            for (int64_t k = 0; k < chunks; ++k) {
                s1 += part[2 * (r * chunks + k)];
                s2 += part[2 * (r * chunks + k) + 1];
            }
            finish_stats(s1, s2, len, first_value(L, x, r), alpha, &mean[r], &rstd[r]);
        }
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < rows * chunks; ++item) {
            int64_t r = item / chunks, lo = (item % chunks) * step, hi = MIN(lo + step, len);
            if (lo < hi) forward_apply(L, x, y, r, lo, hi, mean[r], rstd[r], kind);
        }
    }
    free(part);
}

/* x, y: rows * len values of `dtype`; mean, rstd: rows floats; w, b: channels floats or NULL. */
void layeract_forward(const void *x, void *y, float *mean, float *rstd, const float *w, const float *b,
                      int64_t rows, int64_t len, int64_t channels, int64_t inner, float alpha, int kind,
                      int dtype, int threads) {
    Layout L = make_layout(w, b, rows, len, channels, inner, dtype);
    if (threads < 1) threads = 1;
    forward_all(&L, x, y, mean, rstd, alpha, kind, threads);
}

/* ---------------------------------------------------------------- backward
 *
 * Pass 1 (per value): n, z, s, dz = g x s'(z), dn = w dz; accumulate sum(dn), sum(dn n) for
 * the sample and sum(dz n), sum(dz) per channel; store t = g s + rstd dn in a float buffer
 * (dx itself for float32, a per-thread scratch row for half precision).
 * Pass 2: dx = t - rstd (mean(dn) + n mean(dn n)), an affine function of x.
 * (Recomputing t in pass 2 instead, which moves one tensor fewer, measured slower on an AMD
 * EPYC (Zen 4) for every size and dtype tried, up to 3 MiB samples: the second scale costs more.)
 * A span's float sums of dz (x - mean) overflow for inputs of 1e19 and more: such a span is
 * summed again in double (span_sums_in_double), as the statistics are.
 */

typedef struct { double dn, dnn; } RowSums;

/* One thread's weight and bias gradient sums: doubles across samples; for interleaved rows also
 * float partials, so the hot loop stays in float, moved to the doubles every BLOCK values. */
typedef struct { double *dw, *db; float *fw, *fb; int64_t pending; int *poisoned; } ChannelSums;

/* The sums of backward_span again, in double: inputs of 1e19 and more overflow dz (x - mean) in float. */
static void span_sums_in_double(const void *x, const void *g, int64_t n, float rstd, float mean, float w, float b,
                                int kind, int dt, float *dz_sum, float *dzn_sum) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        double xv = ld(x, i, dt), nv = (xv - mean) * rstd, z = nv * w + b, dz;
        if (kind == SILU) {
            double s = 1.0 / (1.0 + exp(-z));
            dz = ld(g, i, dt) * xv * s * (1.0 - s);
        } else if (kind == GELU || kind == GELU_BF16) {
            dz = ld(g, i, dt) * xv * 0.39894228040143268 * exp(-0.5 * z * z);
        } else if (kind == GELU_TANH) {
            double zc = z < -100.0 ? -100.0 : z > 100.0 ? 100.0 : z;
            double s = 1.0 / (1.0 + exp(-zc * (TANH_A + TANH_B * zc * zc)));
            dz = ld(g, i, dt) * xv * s * (1.0 - s) * (TANH_A + 3.0 * TANH_B * zc * zc);
        } else {
            dz = z > -3.0 && z < 3.0 ? ld(g, i, dt) * xv / 6.0 : 0.0;
        }
        a1 += dz;
        a2 += dz * nv;
    }
    *dz_sum = (float)a1;
    *dzn_sum = (float)a2;
}

/* Pass 1 on a span of one channel with weight w (1 without an affine): since w is constant here,
 * only sum(dz) and sum(dz n) are needed; the sample's sums of dn are w times them. HardSiLU's
 * constant slope 1/6 is applied to the sums, not to every value. */
INLINE void backward_span(const void *restrict x, const void *restrict g, float *restrict t, int64_t n, float rstd,
                          float mean, float w, float b, int kind, int dt, float *dz_sum, float *dzn_sum) {
    Coef k = coef_for(rstd * w, b, kind);
    float slope = kind == HARDSILU ? 1.0f / 6.0f : 1.0f, a1 = 0.0f, a2 = 0.0f;
    float rws = rstd * w * slope;
    for (int64_t i = 0; i < n; ++i) {
        float xv = ld(x, i, dt), gv = ld(g, i, dt);
        float d = xv - mean, gx = gv * xv, v = d * k.a + k.c, s, dz;
        if (kind != HARDSILU) {
            float ds;
            s = smooth_scale(v, kind, &ds);
            dz = gx * whole(ds);
        } else {
            int below = v <= 0.0f, above = v >= 1.0f;
            dz = below || above ? 0.0f : gx;   /* times 1/6, applied through rws and the sums */
            s = below ? 0.0f : above ? 1.0f : v;
        }
        a1 += dz;
        a2 += dz * d;
        t[i] = gv * s + rws * dz;
    }
    *dz_sum = a1 * slope;
    *dzn_sum = a2 * slope * rstd;
    if (!finite_bits(a2) || !finite_bits(a1)) span_sums_in_double(x, g, n, rstd, mean, w, b, kind, dt, dz_sum, dzn_sum);
}

/* s(z) and dz = g x s'(z) for the kind; v is z (smooth kinds) or u (HardSiLU, see coef_for). */
INLINE float scale_and_grad(float v, float gx, int kind, float *dz) {
    if (kind != HARDSILU) {
        float ds, s = smooth_scale(v, kind, &ds);
        *dz = gx * whole(ds);
        return s;
    }
    int below = v <= 0.0f, above = v >= 1.0f;
    *dz = below || above ? 0.0f : gx * (1.0f / 6.0f);
    return below ? 0.0f : above ? 1.0f : v;
}

INLINE void backward_span_interleaved(const void *restrict x, const void *restrict g, float *restrict t, int64_t n,
                                      float mean, float rstd, const float *restrict w, const float *restrict b, int kind,
                                      int dt, float *dn_sum, float *dnn_sum, float *restrict fw, float *restrict fb) {
    float a1 = 0.0f, a2 = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        float xv = ld(x, i, dt), gv = ld(g, i, dt), nv = (xv - mean) * rstd, z = nv * w[i] + b[i];
        float dz, s = scale_and_grad(kind == HARDSILU ? z * (1.0f / 6.0f) + 0.5f : z, gv * xv, kind, &dz);
        float dn = dz * w[i];
        a1 += dn;
        a2 += dn * nv;
        fw[i] += dz * nv;
        fb[i] += dz;
        t[i] = gv * s + rstd * dn;
    }
    *dn_sum = a1;
    *dnn_sum = a2;
}

static void flush_channels(ChannelSums *cs, int64_t channels) {
    for (int64_t c = 0; c < channels; ++c) {
        cs->dw[c] += cs->fw[c];
        cs->db[c] += cs->fb[c];
        cs->fw[c] = 0.0f;
        cs->fb[c] = 0.0f;
    }
    cs->pending = 0;
}

/* bfloat16 pass 1 with x and g fresh from memory (as in a training step, where x was saved long before)
 * ran 2.5x slower than with them in cache (float32: 1.8x): the hardware prefetchers do not keep up with
 * its loop. Asking for the next PREFETCH values ahead, each cache line once, and for the next sample's
 * first ones during pass 2, brought that to 1.3x and the bf16 ResNet-20 step's LayerAct backward from 2.3x
 * aten's silu_backward to about 1.5x (Intel Xeon, 2 cores). float32 got slower with it, so it is left alone. */
#define PREFETCH 2048
static void prefetch(const void *x, const void *g, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) {
        __builtin_prefetch((const char *)x + o, 0, 2);
        __builtin_prefetch((const char *)g + o, 0, 2);
    }
}

/* Pass 1 over values [lo, hi) of one sample (x, g, t point at value lo). */
INLINE RowSums backward_pass1_of(const Layout *L, const void *x, const void *g, float *t, int64_t lo, int64_t hi,
                                 float mean, float rstd, int kind, int dt, ChannelSums *cs) {
    RowSums row = {0.0, 0.0};
    float s1, s2;
    if (L->planar) {
        int64_t fetched = lo;  /* bfloat16: x and g are prefetched up to here (see PREFETCH) */
        for (int64_t i = lo; i < hi;) {
            int64_t c = i / L->inner, end = MIN(MIN((c + 1) * L->inner, hi), i + BLOCK);
            float w = L->w ? L->w[c] : 1.0f, b = L->w ? L->b[c] : 0.0f;
            if (dt == BF16 && fetched < MIN(hi, end + PREFETCH)) {
                int64_t from = MAX(fetched, end);
                fetched = MIN(hi, end + PREFETCH);
                prefetch(at(x, from - lo, dt), at(g, from - lo, dt), (fetched - from) * 2);
            }
            backward_span(at(x, i - lo, dt), at(g, i - lo, dt), t + (i - lo), end - i, rstd, mean, w, b, kind, dt,
                          &s1, &s2);
            row.dn += (double)w * s1;
            row.dnn += (double)w * s2;
            if (L->w) { cs->dw[c] += s2; cs->db[c] += s1; }
            i = end;
        }
    } else {
        for (int64_t i = lo, c = lo % L->channels; i < hi; c = 0) {
            int64_t n = MIN(L->channels - c, hi - i);
            backward_span_interleaved(at(x, i - lo, dt), at(g, i - lo, dt), t + (i - lo), n, mean, rstd, L->w + c,
                                      L->b + c, kind, dt, &s1, &s2, cs->fw + c, cs->fb + c);
            row.dn += s1;
            row.dnn += s2;
            cs->pending += n;
            if (cs->pending >= BLOCK) flush_channels(cs, L->channels);
            i += n;
        }
    }
    return row;
}

/* kind and dt made constants (see forward_range). */
static RowSums backward_pass1_kind(const Layout *L, const void *x, const void *g, float *t, int64_t lo, int64_t hi,
                                   float mean, float rstd, int kind, int dt, ChannelSums *cs) {
#define PASS1(KIND, DT) backward_pass1_of(L, x, g, t, lo, hi, mean, rstd, KIND, DT, cs)
    if (dt == BF16) {
        if (kind == SILU) return PASS1(SILU, BF16);
        if (kind == HARDSILU) return PASS1(HARDSILU, BF16);
        if (kind == GELU) return PASS1(GELU, BF16);  /* built with LAYERACT_BF16_FULL_PHI (see kind_for) */
        if (kind == GELU_BF16) return PASS1(GELU_BF16, BF16);
        return PASS1(GELU_TANH, BF16);
    }
    if (kind == SILU) return PASS1(SILU, F32);
    if (kind == HARDSILU) return PASS1(HARDSILU, F32);
    if (kind == GELU) return PASS1(GELU, F32);
    return PASS1(GELU_TANH, F32);
#undef PASS1
}

/* Pass 1 over values [lo, hi) of sample r; t receives the float t of those values. */
static RowSums backward_pass1(const Layout *L, const void *x, const void *g, float *t, int64_t r, int64_t lo,
                              int64_t hi, float mean, float rstd, int kind, ChannelSums *cs) {
    int64_t base = r * L->len;
    if (!finite_bits(mean) || !finite_bits(rstd)) {
        RowSums none = {0.0, 0.0};
        fill_nan(t, hi - lo);  /* pass 2 only adds to it */
        #pragma omp atomic write
        *cs->poisoned = 1;
        return none;
    }
    if (L->dtype != F16)
        return backward_pass1_kind(L, at(x, base + lo, L->dtype), at(g, base + lo, L->dtype), t, lo, hi, mean, rstd,
                                   kind_for(kind, L->dtype), L->dtype, cs);
    RowSums sums = {0.0, 0.0};
    float xt[TILE], gt[TILE];
    for (int64_t a = lo; a < hi; a += TILE) {
        int64_t n = MIN(TILE, hi - a);
        load_tile(x, base + a, n, xt, L->dtype);
        load_tile(g, base + a, n, gt, L->dtype);
        RowSums part = backward_pass1_kind(L, xt, gt, t + (a - lo), a, a + n, mean, rstd, kind, F32, cs);
        sums.dn += part.dn;
        sums.dnn += part.dnn;
    }
    return sums;
}

/* dx = t - rstd (mean(dn) + n mean(dn n)) over n values; t and dx may be the same floats. */
INLINE void correct(const void *x, const float *t, void *dx, int64_t n, float k0, float k1, float mean, float rstd,
                    int dt) {
    float k1r = k1 * rstd;
    for (int64_t i = 0; i < n; ++i) st(dx, i, t[i] + k0 + k1r * (ld(x, i, dt) - mean), dt);
}

/* Pass 2 over values [lo, hi) of sample r, given pass 1's t for them and the sample's sums. */
static void backward_pass2(const Layout *L, const void *x, void *dx, const float *t, int64_t r, int64_t lo, int64_t hi,
                           RowSums sums, float mean, float rstd) {
    int64_t base = r * L->len;
    float k0 = (float)(-(double)rstd * sums.dn / (double)L->len);
    float k1 = (float)(-(double)rstd * sums.dnn / (double)L->len);
    if (L->dtype == F32) {
        correct(at(x, base + lo, F32), t, at_mut(dx, base + lo, F32), hi - lo, k0, k1, mean, rstd, F32);
        return;
    }
    float xt[TILE], dt[TILE];
    for (int64_t a = lo; a < hi; a += TILE) {
        int64_t n = MIN(TILE, hi - a);
        load_tile(x, base + a, n, xt, L->dtype);
        correct(xt, t + (a - lo), dt, n, k0, k1, mean, rstd, F32);
        store_tile(dt, dx, base + a, n, L->dtype);
    }
}

static int backward_all(const Layout *L, const void *g, const void *x, const float *mean, const float *rstd,
                        void *dx, float *dw, float *db, int kind, int threads) {
    int64_t len = L->len, rows = L->rows, channels = L->channels;
    int chunked = rows < threads && len >= CHUNK_MIN;
    int64_t chunks = chunked ? (threads + rows - 1) / rows : 1;
    int64_t step = (len + chunks - 1) / chunks;
    int use = rows * len >= PARALLEL_MIN && rows * chunks > 1 ? threads : 1;
    int64_t per_thread = L->w ? channels : 0;
    /* t of half-precision samples: a float row per thread, or per sample when samples are chunked */
    int64_t t_rows = L->dtype == F32 ? 0 : chunked ? rows : use;
    /* scratch only where needed: the common case (float32, no affine, a sample per thread) allocates nothing */
    double *dsums = per_thread ? (double *)calloc((size_t)(2 * use * per_thread), sizeof(double)) : NULL;
    float *fsums = per_thread ? (float *)calloc((size_t)(2 * use * per_thread), sizeof(float)) : NULL;
    RowSums *part = chunked ? (RowSums *)calloc((size_t)(rows * chunks), sizeof(RowSums)) : NULL;
    float *scratch = t_rows ? (float *)malloc((size_t)(t_rows * len) * sizeof(float)) : NULL;
    int poisoned = 0;
    if ((per_thread && (dsums == NULL || fsums == NULL)) || (chunked && part == NULL) || (t_rows && !scratch)) {
        free(dsums); free(fsums); free(part); free(scratch);
        return -1;
    }
    #pragma omp parallel num_threads(use)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        ChannelSums cs = {NULL, NULL, NULL, NULL, 0, &poisoned};
        if (per_thread) {
            cs.dw = dsums + 2 * tid * per_thread;
            cs.db = cs.dw + per_thread;
            cs.fw = fsums + 2 * tid * per_thread;
            cs.fb = cs.fw + per_thread;
        }
        if (!chunked) {
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                float *t = scratch ? scratch + tid * len : (float *)dx + r * len;
                RowSums sums = backward_pass1(L, x, g, t, r, 0, len, mean[r], rstd[r], kind, &cs);
                if (L->dtype == BF16 && L->planar && r + 1 < rows)  /* the next sample's start, during pass 2 */
                    prefetch(at(x, (r + 1) * len, BF16), at(g, (r + 1) * len, BF16), MIN(len, PREFETCH) * 2);
                backward_pass2(L, x, dx, t, r, 0, len, sums, mean[r], rstd[r]);
            }
        } else {
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < rows * chunks; ++item) {
                int64_t r = item / chunks, lo = (item % chunks) * step, hi = MIN(lo + step, len);
                float *t = (scratch ? scratch : (float *)dx) + r * len + lo;
                if (lo < hi) part[item] = backward_pass1(L, x, g, t, r, lo, hi, mean[r], rstd[r], kind, &cs);
            }
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < rows * chunks; ++item) {
                int64_t r = item / chunks, lo = (item % chunks) * step, hi = MIN(lo + step, len);
                float *t = (scratch ? scratch : (float *)dx) + r * len + lo;
                RowSums sums = {0.0, 0.0};
                for (int64_t k = 0; k < chunks; ++k) {
                    sums.dn += part[r * chunks + k].dn;
                    sums.dnn += part[r * chunks + k].dnn;
                }
                if (lo < hi) backward_pass2(L, x, dx, t, r, lo, hi, sums, mean[r], rstd[r]);
            }
        }
        if (L->w && !L->planar) flush_channels(&cs, channels);
    }
    if (L->w) {
        for (int64_t c = 0; c < channels; ++c) {
            double sw = 0.0, sb = 0.0;
            for (int t = 0; t < use; ++t) {
                sw += dsums[2 * t * per_thread + c];
                sb += dsums[(2 * t + 1) * per_thread + c];
            }
            dw[c] = (float)sw;
            db[c] = (float)sb;
        }
        if (poisoned) {
            fill_nan(dw, channels);
            fill_nan(db, channels);
        }
    }
    free(dsums); free(fsums); free(part); free(scratch);
    return 0;
}

/* g, x, dx: rows * len values of `dtype`; dw, db: the weight and bias gradients (channels floats
 * each), written only with an affine. Returns 0, or -1 when memory ran out. */
int layeract_backward(const void *g, const void *x, const float *mean, const float *rstd, const float *w,
                      const float *b, void *dx, float *dw, float *db, int64_t rows, int64_t len, int64_t channels,
                      int64_t inner, int kind, int dtype, int threads) {
    Layout L = make_layout(w, b, rows, len, channels, inner, dtype);
    if (threads < 1) threads = 1;
    return backward_all(&L, g, x, mean, rstd, dx, dw, db, kind, threads);
}
