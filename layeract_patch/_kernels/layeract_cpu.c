/* LayerAct forward and backward on CPU, float32: one fused pass per sample.
 *
 * Each sample ("row") of L floats is laid out either
 *   planar:      [C][inner]  (contiguous tensors; per-channel parameters are scalars in a span)
 *   interleaved: [outer][C]  (channels_last, or the channel dim last; parameters vary along a span)
 * Without an affine the row is one planar channel (C = 1, weight 1, bias 0).
 *
 * A sample's statistics are taken and then applied while its slice is still in cache, so the
 * kernel moves the same bytes as SiLU. Samples run in parallel; when there are fewer samples
 * than threads and they are large, each sample is cut into chunks instead (two parallel phases).
 * Sums are taken in float over short blocks (vectorised) and carried in double across blocks;
 * the variance uses sums shifted by the sample's first value, so a large mean cannot cancel it.
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

#define SILU 0
#define HARDSILU 1
#define BLOCK 4096          /* floats summed in float before the sum moves to double */
#define LANES 32            /* partial sums kept apart in a float sum (four AVX registers) */
#define CHUNK_MIN 32768     /* a sample must be this large before it is cut into chunks */
#define PARALLEL_MIN 16384  /* below this many elements in all, threads cost more than they save */
#define INLINE static inline __attribute__((always_inline))

/* exp(t) for t in [-80, 80]: Cephes' expf polynomial on a range-reduced argument, written so
 * the compiler vectorises it (libm's expf would stay scalar without -ffast-math). */
INLINE float exp_approx(float t) {
    float k = __builtin_floorf(t * 1.44269504088896341f + 0.5f);
    float r = t - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return p * two_k;
}

/* Whether v is finite, read from its bits: -ffinite-math-only lets the compiler fold isfinite() away. */
static int finite_bits(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7f800000u) != 0x7f800000u;
}

static void fill_nan(float *p, int64_t n) {
    uint32_t bits = 0x7fc00000u;
    float nan;
    memcpy(&nan, &bits, sizeof nan);
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

/* HardSiLU is computed from u = z / 6 + 1/2, whose coefficients fold into those of z:
 * s = clamp(u, 0, 1) and ds/dz = 1/6 where 0 < u < 1 (-3 < z < 3). */
typedef struct { float a, c; } Coef;  /* z (or u) = a (x - mean) + c */

INLINE Coef coef_for(float a, float c, int kind) {
    Coef k = {a, c};
    if (kind == HARDSILU) { k.a = a * (1.0f / 6.0f); k.c = c * (1.0f / 6.0f) + 0.5f; }
    return k;
}

typedef struct {
    const float *w, *b;     /* per-channel affine, or NULL */
    int64_t rows, len;      /* samples and floats per sample */
    int64_t channels, inner;/* planar when inner > 1 or no affine; interleaved when inner == 1 */
    int planar;
} Layout;

static Layout make_layout(const float *w, const float *b, int64_t rows, int64_t len, int64_t channels, int64_t inner) {
    Layout lay = {w, b, rows, len, channels, inner, 1};
    if (w == NULL) {
        lay.channels = 1;
        lay.inner = len;
    } else if (inner == 1 && channels > 1) {
        lay.planar = 0;
    }
    return lay;
}

/* ---------------------------------------------------------------- statistics */

/* Sums of (x - shift) and its square over x[lo, hi). LANES partial sums let the adds overlap
 * instead of waiting on one another. */
static void shifted_sums(const float *x, int64_t lo, int64_t hi, float shift, double *s1, double *s2) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t start = lo; start < hi; start += BLOCK) {
        int64_t end = start + BLOCK < hi ? start + BLOCK : hi, i = start;
        float b1[LANES] = {0.0f}, b2[LANES] = {0.0f}, r1 = 0.0f, r2 = 0.0f;
        for (; i + LANES <= end; i += LANES) {
            for (int j = 0; j < LANES; ++j) {
                float d = x[i + j] - shift;
                b1[j] += d;
                b2[j] += d * d;
            }
        }
        for (; i < end; ++i) {
            float d = x[i] - shift;
            r1 += d;
            r2 += d * d;
        }
        for (int j = 0; j < LANES; ++j) {
            r1 += b1[j];
            r2 += b2[j];
        }
        a1 += r1;
        a2 += r2;
    }
    *s1 += a1;
    *s2 += a2;
}

static void finish_stats(double s1, double s2, int64_t len, float shift, float alpha, float *mean, float *rstd) {
    double d = s1 / (double)len;
    double var = s2 / (double)len - d * d;
    if (var < 0.0) var = 0.0;
    *mean = (float)(shift + d);
    *rstd = (float)(1.0 / sqrt(var + (double)alpha));
}

/* ---------------------------------------------------------------- forward */

/* y = x s(z) with z = a (x - mean) + c (a span of one channel, or a whole sample without an affine).
 * x - mean comes first: it is exact for x near the mean, so a mean far above the spread costs
 * no precision (x a - mean a would cancel). */
INLINE void forward_span(const float *restrict x, float *restrict y, int64_t n, float mean, float a, float c,
                         int kind) {
    Coef k = coef_for(a, c, kind);
    for (int64_t i = 0; i < n; ++i) {
        float v = (x[i] - mean) * k.a + k.c;
        y[i] = x[i] * (kind == SILU ? sigmoid(v) : clamp(v, 0.0f, 1.0f));
    }
}

/* The same along one interleaved row, where the affine changes with every float. */
INLINE void forward_span_interleaved(const float *restrict x, float *restrict y, int64_t n, float mean, float rstd,
                                     const float *restrict w, const float *restrict b, int kind) {
    for (int64_t i = 0; i < n; ++i) {
        float z = (x[i] - mean) * rstd * w[i] + b[i];
        y[i] = x[i] * (kind == SILU ? sigmoid(z) : clamp(z * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f));
    }
}

/* Apply the activation to floats [lo, hi) of one sample; lo and hi are whole interleaved rows. */
INLINE void forward_range_of(const Layout *L, const float *x, float *y, int64_t lo, int64_t hi,
                          float mean, float rstd, int kind) {
    if (L->planar) {
        for (int64_t i = lo; i < hi;) {
            int64_t c = i / L->inner, end = (c + 1) * L->inner < hi ? (c + 1) * L->inner : hi;
            float w = L->w ? L->w[c] : 1.0f, b = L->w ? L->b[c] : 0.0f;
            forward_span(x + i, y + i, end - i, mean, rstd * w, b, kind);
            i = end;
        }
    } else {
        for (int64_t i = lo; i < hi; i += L->channels)
            forward_span_interleaved(x + i, y + i, L->channels, mean, rstd, L->w, L->b, kind);
    }
}

/* `kind` is made a constant here, outside the OpenMP bodies that gcc outlines before inlining:
 * a kind known only at run time would make the hot loop compute both scale functions. */
static void forward_range(const Layout *L, const float *x, float *y, int64_t lo, int64_t hi, float mean, float rstd,
                          int kind) {
    if (!finite_bits(mean) || !finite_bits(rstd)) fill_nan(y + lo, hi - lo);
    else if (kind == SILU) forward_range_of(L, x, y, lo, hi, mean, rstd, SILU);
    else forward_range_of(L, x, y, lo, hi, mean, rstd, HARDSILU);
}

static void forward_kind(const Layout *L, const float *x, float *y, float *mean, float *rstd, float alpha,
                         int kind, int threads) {
    int64_t len = L->len, rows = L->rows;
    int chunked = rows < threads && len >= CHUNK_MIN;
    int64_t chunks = chunked ? (threads + rows - 1) / rows : 1;
    double *part = chunked ? (double *)calloc((size_t)(rows * chunks * 2), sizeof(double)) : NULL;
    if (!part) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (rows * len >= PARALLEL_MIN && rows > 1)
        for (int64_t r = 0; r < rows; ++r) {
            const float *xr = x + r * len;
            double s1 = 0.0, s2 = 0.0;
            shifted_sums(xr, 0, len, xr[0], &s1, &s2);
            finish_stats(s1, s2, len, xr[0], alpha, &mean[r], &rstd[r]);
            forward_range(L, xr, y + r * len, 0, len, mean[r], rstd[r], kind);
        }
        return;
    }
    /* Few large samples: each is cut into `chunks` pieces, summed in parallel, then applied. */
    int64_t unit = L->planar ? 1 : L->channels;
    int64_t step = ((len / unit + chunks - 1) / chunks) * unit;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < rows * chunks; ++item) {
            int64_t r = item / chunks, lo = (item % chunks) * step, hi = lo + step < len ? lo + step : len;
            const float *xr = x + r * len;
            if (lo < hi) shifted_sums(xr, lo, hi, xr[0], &part[2 * item], &part[2 * item + 1]);
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            double s1 = 0.0, s2 = 0.0;
            for (int64_t k = 0; k < chunks; ++k) {
                s1 += part[2 * (r * chunks + k)];
                s2 += part[2 * (r * chunks + k) + 1];
            }
            finish_stats(s1, s2, len, x[r * len], alpha, &mean[r], &rstd[r]);
        }
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < rows * chunks; ++item) {
            int64_t r = item / chunks, lo = (item % chunks) * step, hi = lo + step < len ? lo + step : len;
            if (lo < hi) forward_range(L, x + r * len, y + r * len, lo, hi, mean[r], rstd[r], kind);
        }
    }
    free(part);
}

void layeract_forward(const float *x, float *y, float *mean, float *rstd, const float *w, const float *b,
                      int64_t rows, int64_t len, int64_t channels, int64_t inner, float alpha, int kind,
                      int threads) {
    Layout L = make_layout(w, b, rows, len, channels, inner);
    if (threads < 1) threads = 1;
    forward_kind(&L, x, y, mean, rstd, alpha, kind, threads);
}

/* ---------------------------------------------------------------- backward
 *
 * Pass 1 (per element): n, z, s, dz = g x s'(z), dn = w dz; accumulate sum(dn), sum(dn n) for
 * the sample and sum(dz n), sum(dz) per channel; store t = g s + rstd dn into dx.
 * Pass 2: dx = t - rstd (mean(dn) + n mean(dn n)), an affine function of x.
 */

typedef struct { double dn, dnn; } RowSums;

/* One thread's weight and bias gradient sums: doubles across samples; for interleaved rows also
 * float partials, so the hot loop stays in float, moved to the doubles every BLOCK floats. */
typedef struct { double *dw, *db; float *fw, *fb; int64_t pending; int *poisoned; } ChannelSums;

/* s(z) and dz = g x s'(z) for the kind; v is z (SiLU) or u (HardSiLU, see coef_for). */
INLINE float scale_and_grad(float v, float gx, int kind, float *dz) {
    if (kind == SILU) {
        float s = sigmoid(v);
        *dz = gx * (s * (1.0f - s));
        return s;
    }
    int below = v <= 0.0f, above = v >= 1.0f;
    *dz = below || above ? 0.0f : gx * (1.0f / 6.0f);
    return below ? 0.0f : above ? 1.0f : v;
}

/* Pass 1 on a span of one channel with weight w (1 without an affine): since w is constant here,
 * only sum(dz) and sum(dz n) are needed; the sample's sums of dn are w times them. Constant
 * factors (rstd in n, and HardSiLU's slope 1/6) are applied to the sums, not to every float. */
INLINE void backward_span(const float *restrict x, const float *restrict g, float *restrict t, int64_t n, float rstd,
                          float mean, float w, float b, int kind, float *dz_sum, float *dzn_sum) {
    Coef k = coef_for(rstd * w, b, kind);
    float slope = kind == SILU ? 1.0f : 1.0f / 6.0f, a1 = 0.0f, a2 = 0.0f;
    float rws = rstd * w * slope;
    for (int64_t i = 0; i < n; ++i) {
        float d = x[i] - mean, gx = g[i] * x[i], v = d * k.a + k.c, s, dz;
        if (kind == SILU) {
            s = sigmoid(v);
            dz = gx * (s * (1.0f - s));
        } else {
            int below = v <= 0.0f, above = v >= 1.0f;
            dz = below || above ? 0.0f : gx;   /* times 1/6, applied through rws and the sums */
            s = below ? 0.0f : above ? 1.0f : v;
        }
        a1 += dz;
        a2 += dz * d;
        t[i] = g[i] * s + rws * dz;
    }
    *dz_sum = a1 * slope;
    *dzn_sum = a2 * slope * rstd;
}

INLINE void backward_span_interleaved(const float *restrict x, const float *restrict g, float *restrict t, int64_t n,
                                      float mean, float rstd, const float *restrict w, const float *restrict b, int kind,
                                      float *dn_sum, float *dnn_sum, float *restrict fw, float *restrict fb) {
    float a1 = 0.0f, a2 = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        float nv = (x[i] - mean) * rstd, z = nv * w[i] + b[i];
        float dz, s = scale_and_grad(kind == SILU ? z : z * (1.0f / 6.0f) + 0.5f, g[i] * x[i], kind, &dz);
        float dn = dz * w[i];
        a1 += dn;
        a2 += dn * nv;
        fw[i] += dz * nv;
        fb[i] += dz;
        t[i] = g[i] * s + rstd * dn;
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

/* Pass 1 over floats [lo, hi) of one sample: dx holds t afterwards. */
INLINE RowSums backward_pass1_of(const Layout *L, const float *x, const float *g, float *t, int64_t lo, int64_t hi,
                                 float mean, float rstd, int kind, ChannelSums *cs) {
    RowSums row = {0.0, 0.0};
    float s1, s2;
    if (L->planar) {
        for (int64_t i = lo; i < hi;) {
            int64_t c = i / L->inner, end = (c + 1) * L->inner < hi ? (c + 1) * L->inner : hi;
            if (end - i > BLOCK) end = i + BLOCK;
            float w = L->w ? L->w[c] : 1.0f, b = L->w ? L->b[c] : 0.0f;
            backward_span(x + i, g + i, t + i, end - i, rstd, mean, w, b, kind, &s1, &s2);
            row.dn += (double)w * s1;
            row.dnn += (double)w * s2;
            if (L->w) { cs->dw[c] += s2; cs->db[c] += s1; }
            i = end;
        }
    } else {
        for (int64_t i = lo; i < hi; i += L->channels) {
            backward_span_interleaved(x + i, g + i, t + i, L->channels, mean, rstd, L->w, L->b, kind, &s1, &s2,
                                      cs->fw, cs->fb);
            row.dn += s1;
            row.dnn += s2;
            cs->pending += L->channels;
            if (cs->pending >= BLOCK) flush_channels(cs, L->channels);
        }
    }
    return row;
}

static RowSums backward_pass1(const Layout *L, const float *x, const float *g, float *t, int64_t lo, int64_t hi,
                              float mean, float rstd, int kind, ChannelSums *cs) {
    if (!finite_bits(mean) || !finite_bits(rstd)) {
        RowSums none = {0.0, 0.0};
        fill_nan(t + lo, hi - lo);  /* pass 2 only adds to it */
        #pragma omp atomic write
        *cs->poisoned = 1;
        return none;
    }
    if (kind == SILU) return backward_pass1_of(L, x, g, t, lo, hi, mean, rstd, SILU, cs);
    return backward_pass1_of(L, x, g, t, lo, hi, mean, rstd, HARDSILU, cs);
}

/* Pass 2 over n floats: dx = t - rstd (mean(dn) + n mean(dn n)) with n = rstd (x - mean). */
static void backward_pass2(const float *restrict x, float *restrict dx, int64_t n, RowSums sums, int64_t len,
                           float mean, float rstd) {
    float k0 = (float)(-(double)rstd * sums.dn / (double)len);
    float k1 = (float)(-(double)rstd * rstd * sums.dnn / (double)len);
    for (int64_t i = 0; i < n; ++i) dx[i] += k0 + k1 * (x[i] - mean);
}

static int backward_kind(const Layout *L, const float *g, const float *x, const float *mean, const float *rstd,
                         float *dx, float *dw, float *db, int kind, int threads) {
    int64_t len = L->len, rows = L->rows, channels = L->channels;
    int chunked = rows < threads && len >= CHUNK_MIN;
    int64_t chunks = chunked ? (threads + rows - 1) / rows : 1;
    int64_t unit = L->planar ? 1 : channels;
    int64_t step = ((len / unit + chunks - 1) / chunks) * unit;
    int use = rows * len >= PARALLEL_MIN && rows * chunks > 1 ? threads : 1;
    int64_t per_thread = L->w ? channels : 0;
    /* scratch only where needed: the common case (no affine, a sample per thread) allocates nothing */
    double *dsums = per_thread ? (double *)calloc((size_t)(2 * use * per_thread), sizeof(double)) : NULL;
    float *fsums = per_thread ? (float *)calloc((size_t)(2 * use * per_thread), sizeof(float)) : NULL;
    RowSums *part = chunked ? (RowSums *)calloc((size_t)(rows * chunks), sizeof(RowSums)) : NULL;
    int poisoned = 0;
    if ((per_thread && (dsums == NULL || fsums == NULL)) || (chunked && part == NULL)) {
        free(dsums); free(fsums); free(part);
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
                RowSums sums = backward_pass1(L, x + r * len, g + r * len, dx + r * len, 0, len, mean[r], rstd[r],
                                              kind, &cs);
                backward_pass2(x + r * len, dx + r * len, len, sums, len, mean[r], rstd[r]);
            }
        } else {
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < rows * chunks; ++item) {
                int64_t r = item / chunks, lo = (item % chunks) * step, hi = lo + step < len ? lo + step : len;
                if (lo < hi) part[item] = backward_pass1(L, x + r * len, g + r * len, dx + r * len, lo, hi, mean[r],
                                                         rstd[r], kind, &cs);
            }
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < rows * chunks; ++item) {
                int64_t r = item / chunks, lo = (item % chunks) * step, hi = lo + step < len ? lo + step : len;
                RowSums sums = {0.0, 0.0};
                for (int64_t k = 0; k < chunks; ++k) {
                    sums.dn += part[r * chunks + k].dn;
                    sums.dnn += part[r * chunks + k].dnn;
                }
                if (lo < hi)
                    backward_pass2(x + r * len + lo, dx + r * len + lo, hi - lo, sums, len, mean[r], rstd[r]);
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
    free(dsums); free(fsums); free(part);
    return 0;
}

/* dw, db: the weight and bias gradients (channels floats each), written only with an affine.
 * Returns 0, or -1 when memory ran out. */
int layeract_backward(const float *g, const float *x, const float *mean, const float *rstd, const float *w,
                      const float *b, float *dx, float *dw, float *db, int64_t rows, int64_t len, int64_t channels,
                      int64_t inner, int kind, int threads) {
    Layout L = make_layout(w, b, rows, len, channels, inner);
    if (threads < 1) threads = 1;
    return backward_kind(&L, g, x, mean, rstd, dx, dw, db, kind, threads);
}
