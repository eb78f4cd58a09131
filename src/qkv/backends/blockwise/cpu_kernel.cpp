// Blockwise attention on the CPU: one query block against one contiguous key slice at a time.
//
// A block is `bq` query rows [q0, q0 + bq) of one (batch, head) against `klen` keys of
// its kv head: the slice [k0, k0 + klen), or several slices (segments) one after the
// other, with an optional additive float tile that carries the per-element mask
// (-inf where a query may not attend) and any dense bias: the block reads rows
// [trow, trow + bq) of a tile (B'|1, Hq|1, rows, klen). A one-slice block computes
// only the keys its rows may attend: the columns between the first and the last
// finite tile entry of its rows (widened to a multiple of KEY_ALIGN keys, on which
// the BLAS products run fastest). Every block computes all its keys in one piece:
//
//   forward:  S = scale·Q·Kᵀ + tile;  m = rowmax S;  P = exp(S − m);  l = rowsum P
//             O = P·V / l;  lse = m + log l          (a row with no key: O = 0, lse = −inf)
//   backward: P = exp(scale·Q·Kᵀ + tile − lse);  δ = rowsum(dO ∘ O) − dlse
//             dV += Pᵀ·dO;  dS = P ∘ (dO·Vᵀ − δ)·scale;  dQ = dS·K;  dK += dSᵀ·Q
//
// The five matrix products (one per segment each) go to the BLAS torch links
// (sgemm/dgemm); the blocks' key and value gradients are added straight into dK and dV, so nothing beyond
// one block's scores is ever allocated. Blocks run in parallel over torch's
// intra-op threads: forward over (batch, head, block); backward over (batch, kv
// head), so no two threads add into the same rows of dK and dV (where those do not
// share out evenly over the threads, the blocks are split into chunks that add into
// private buffers, summed at the end).
//
// Tensors: q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), the last dim
// contiguous, any other strides; out (B, Hq, Nq, Dv) and lse (B, Hq, Nq) written in
// place. blocks: int64 (n, 8) rows (q0, bq, k0, klen, tile, trow, seg0, nseg): tile an
// index into `tiles` or −1; nseg 0 for the one slice at k0, else the block's keys are
// segments[seg0 : seg0 + nseg], int64 (start, length) rows. Tiles contiguous, of q's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

// Column-major BLAS gemm: C (m×n) = alpha·op(A)·op(B) + beta·C.
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                 const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  dgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

// e^x for softmax arguments (x <= 0 or -inf): Cody-Waite reduction x = n·ln2 + r with fused
// multiply-adds, a degree-5 polynomial for e^r (Cephes' expf; within 1 ulp on [-87, 0]), and 0 for
// x < -87 (no denormals, no special-case lanes: libm's vector exp falls back to scalar code
// for every vector holding a -inf, which a masked row is full of).
inline float exp_of(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = std::fma(-n, 0.693145751953125f, xc);
  r = std::fma(-n, 1.428606765330187045e-06f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < -87.0f ? 0.0f : p * two_n;
}

inline double exp_of(double x) { return std::exp(x); }

struct Block {
  int64_t q0, bq, k0, klen, tile, trow, seg0, nseg;
};

// A run of consecutive keys of a block: keys [start, start + len) are its columns [col, col + len).
struct Segment {
  int64_t start, len, col;
};

constexpr int64_t KEY_ALIGN = 16;

std::vector<Block> read_blocks(const at::Tensor& blocks) {
  TORCH_CHECK(blocks.dtype() == at::kLong && blocks.dim() == 2 && blocks.size(1) == 8, "blocks: int64 (n, 8)");
  auto b = blocks.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  std::vector<Block> out(b.size(0));
  for (int64_t i = 0; i < b.size(0); ++i) {
    const int64_t* r = p + 8 * i;
    out[i] = {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
  }
  return out;
}

std::vector<Segment> read_segments(const at::Tensor& segments) {
  TORCH_CHECK(segments.dtype() == at::kLong && segments.dim() == 2 && segments.size(1) == 2,
              "segments: int64 (n, 2)");
  auto t = segments.contiguous();
  const int64_t* p = t.data_ptr<int64_t>();
  std::vector<Segment> out(t.size(0));
  for (int64_t i = 0; i < t.size(0); ++i) out[i] = {p[2 * i], p[2 * i + 1], 0};
  return out;
}

// One call's blocks, their segments and their tiles.
struct Work {
  std::vector<Block> blocks;
  std::vector<Segment> segments;
  std::vector<at::Tensor> tiles;
};

// The block's first tile row for batch row b and head h (tiles broadcast over size-1 leading dims).
template <typename T>
const T* tile_ptr(const Work& work, const Block& blk, int64_t b, int64_t h) {
  if (blk.tile < 0) return nullptr;
  const at::Tensor& t = work.tiles[blk.tile];
  int64_t tb = t.size(0) == 1 ? 0 : b, th = t.size(1) == 1 ? 0 : h;
  return t.data_ptr<T>() + tb * t.stride(0) + th * t.stride(1) + blk.trow * t.stride(2);
}

// The columns [lo, hi) of a one-slice block that some row may attend: between the first and
// the last finite tile entry of its rows, widened to a multiple of KEY_ALIGN within [0, klen).
// hi <= lo: no row of the block has a key.
template <typename T>
std::pair<int64_t, int64_t> key_range(const T* tile, const Block& blk) {
  if (!tile) return {0, blk.klen};
  int64_t lo = blk.klen, hi = 0;
  for (int64_t i = 0; i < blk.bq; ++i) {
    const T* row = tile + i * blk.klen;
    int64_t j = 0;
    while (j < lo && std::isinf(row[j])) ++j;
    lo = std::min(lo, j);
    j = blk.klen;
    while (j > hi && std::isinf(row[j - 1])) --j;
    hi = std::max(hi, j);
  }
  if (hi <= lo) return {0, 0};
  const int64_t want = std::min(blk.klen, (hi - lo + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN);
  lo = std::max<int64_t>(0, hi - want);  // widened into earlier keys first, then later ones
  return {lo, lo + want};
}

// What a block computes: its segments (columns counted from the first computed one), how
// many columns, and the tile column of the first.
struct Keys {
  std::vector<Segment> segs;
  int64_t width = 0, tile_col = 0;
};

template <typename T>
Keys block_keys(const T* tile, const Block& blk, const Work& work) {
  Keys keys;
  if (blk.nseg == 0) {
    const auto [lo, hi] = key_range(tile, blk);
    if (hi > lo) keys.segs.push_back({blk.k0 + lo, hi - lo, 0});
    keys.width = std::max<int64_t>(0, hi - lo);
    keys.tile_col = lo;
    return keys;
  }
  for (int64_t i = 0; i < blk.nseg; ++i) {
    Segment seg = work.segments[blk.seg0 + i];
    seg.col = keys.width;
    keys.width += seg.len;
    keys.segs.push_back(seg);
  }
  return keys;
}

// s (bq×r, row-major, r = keys.width) = scale·Q·Kᵀ (the tile is added row by row by the caller).
template <typename T>
void scores(T* s, const T* q, int64_t ldq, const T* k, int64_t ldk, int64_t bq, const Keys& keys, int64_t d,
            T scale) {
  // row-major S (bq×r) is column-major Sᵀ (r×bq) = K·Qᵀ, one segment's rows of it at a time
  for (const Segment& seg : keys.segs) {
    gemm('T', 'N', seg.len, bq, d, scale, k + seg.start * ldk, ldk, q, ldq, T(0), s + seg.col, keys.width);
  }
}

// row += tile (if any); returns the row's max.
template <typename T>
T add_tile_max(T* __restrict row, const T* __restrict tile, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  if (tile) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] += tile[j];
  }
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
  return m;
}

// A row whose max is −inf holds NaN where it may attend (a NaN query, or NaN keys only): some score
// is NaN while its tile entry is not −inf. Checked only for such rows, off the hot path.
template <typename T>
bool nan_row(const T* row, const T* tile, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    if (std::isnan(row[j]) && !(tile && std::isinf(tile[j]) && tile[j] < 0)) return true;
  }
  return false;
}

template <typename T>
void forward_block(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                   const Work& work, const Block& blk, int64_t b, int64_t h, T scale, std::vector<T>& buf) {
  const int64_t d = q.size(3), dv = v.size(3), hkv = h / (q.size(1) / k.size(1));
  const T* tile = tile_ptr<T>(work, blk, b, h);
  const Keys keys = block_keys(tile, blk, work);
  const int64_t r = keys.width;
  T* op = out.data_ptr<T>() + b * out.stride(0) + h * out.stride(1) + blk.q0 * out.stride(2);
  T* lp = lse.data_ptr<T>() + b * lse.stride(0) + h * lse.stride(1) + blk.q0 * lse.stride(2);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (r <= 0) {  // no row of the block has a key: O = 0, lse = −inf
    for (int64_t i = 0; i < blk.bq; ++i) {
      std::fill(op + i * out.stride(2), op + i * out.stride(2) + dv, T(0));
      lp[i * lse.stride(2)] = neg_inf;
    }
    return;
  }
  const T* qp = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1) + blk.q0 * q.stride(2);
  const T* kp = k.data_ptr<T>() + b * k.stride(0) + hkv * k.stride(1);
  const T* vp = v.data_ptr<T>() + b * v.stride(0) + hkv * v.stride(1);
  buf.resize(blk.bq * (r + 1));
  T* s = buf.data();
  T* inv = s + blk.bq * r;
  scores(s, qp, q.stride(2), kp, k.stride(2), blk.bq, keys, d, scale);
  for (int64_t i = 0; i < blk.bq; ++i) {
    T* row = s + i * r;
    const T m = add_tile_max(row, tile ? tile + i * blk.klen + keys.tile_col : nullptr, r);
    if (m == neg_inf) {  // no finite score: no key for this row (O = 0, lse = −inf), or NaN scores only
      const T* trow = tile ? tile + i * blk.klen + keys.tile_col : nullptr;
      if (nan_row(row, trow, r)) {  // NaN where the row may attend: O = NaN, lse = NaN, as the spec says
        const T nan = std::numeric_limits<T>::quiet_NaN();
        std::fill(row, row + r, nan);
        inv[i] = nan;
        lp[i * lse.stride(2)] = nan;
        continue;
      }
      std::fill(row, row + r, T(0));
      inv[i] = T(0);
      lp[i * lse.stride(2)] = neg_inf;
      continue;
    }
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < r; ++j) {
      const T e = exp_of(row[j] - m);
      row[j] = e;
      sum += e;
    }
    inv[i] = T(1) / sum;
    lp[i * lse.stride(2)] = m + std::log(sum);
  }
  // row-major O (bq×dv) is column-major Oᵀ (dv×bq) = Vᵀ·Pᵀ, summed over the segments
  for (size_t i = 0; i < keys.segs.size(); ++i) {
    const Segment& seg = keys.segs[i];
    gemm('N', 'N', dv, blk.bq, seg.len, T(1), vp + seg.start * v.stride(2), v.stride(2), s + seg.col, r,
         T(i == 0 ? 0 : 1), op, out.stride(2));
  }
  for (int64_t i = 0; i < blk.bq; ++i) {
    T* orow = op + i * out.stride(2);
    for (int64_t c = 0; c < dv; ++c) orow[c] *= inv[i];
  }
}

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                  const Work& work, double scale) {
  const int64_t B = q.size(0), H = q.size(1), n = work.blocks.size();
  at::parallel_for(0, B * H * n, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t bh = w / n;
      forward_block<T>(q, k, v, out, lse, work, work.blocks[w % n], bh / H, bh % H, T(scale), buf);
    }
  });
}

template <typename T>
void backward_block(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                    const at::Tensor& lse, const at::Tensor& dout, const T* dlse, at::Tensor& dq, T* dk,
                    int64_t lddk, T* dv_acc, int64_t lddv, const Work& work, const Block& blk, int64_t b, int64_t h,
                    T scale, std::vector<T>& p_buf, std::vector<T>& ds_buf) {
  const int64_t d = q.size(3), dvd = v.size(3), hkv = h / (q.size(1) / k.size(1));
  const T* tile = tile_ptr<T>(work, blk, b, h);
  const Keys keys = block_keys(tile, blk, work);
  const int64_t r = keys.width;
  T* dqp = dq.data_ptr<T>() + b * dq.stride(0) + h * dq.stride(1) + blk.q0 * dq.stride(2);
  if (r <= 0) {  // no row of the block has a key: no gradient
    for (int64_t i = 0; i < blk.bq; ++i) std::fill(dqp + i * dq.stride(2), dqp + i * dq.stride(2) + d, T(0));
    return;
  }
  const T* qp = q.data_ptr<T>() + b * q.stride(0) + h * q.stride(1) + blk.q0 * q.stride(2);
  const T* kp = k.data_ptr<T>() + b * k.stride(0) + hkv * k.stride(1);
  const T* vp = v.data_ptr<T>() + b * v.stride(0) + hkv * v.stride(1);
  const T* op = out.data_ptr<T>() + b * out.stride(0) + h * out.stride(1) + blk.q0 * out.stride(2);
  const T* dop = dout.data_ptr<T>() + b * dout.stride(0) + h * dout.stride(1) + blk.q0 * dout.stride(2);
  const int64_t lse_at = b * lse.stride(0) + h * lse.stride(1) + blk.q0 * lse.stride(2);
  const T* lp = lse.data_ptr<T>() + lse_at;
  if (dlse) dlse += lse_at;  // same layout as lse
  p_buf.resize(blk.bq * r);
  ds_buf.resize(blk.bq * r);
  T* p = p_buf.data();
  T* ds = ds_buf.data();
  scores(p, qp, q.stride(2), kp, k.stride(2), blk.bq, keys, d, scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < blk.bq; ++i) {
    T* row = p + i * r;
    const T l = lp[i * lse.stride(2)];
    if (l == neg_inf) {  // a row with no key passes no gradient
      std::fill(row, row + r, T(0));
      continue;
    }
    const T* trow = tile ? tile + i * blk.klen + keys.tile_col : nullptr;
    if (trow) {
#pragma omp simd
      for (int64_t j = 0; j < r; ++j) row[j] = exp_of(row[j] + trow[j] - l);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < r; ++j) row[j] = exp_of(row[j] - l);
    }
  }
  const int64_t ldv = v.stride(2), ldk = k.stride(2), lddo = dout.stride(2);
  for (const Segment& seg : keys.segs) {
    // dV += Pᵀ·dO: column-major dVᵀ (dv×len) += dOᵀ·P
    gemm('N', 'T', dvd, seg.len, blk.bq, T(1), dop, lddo, p + seg.col, r, T(1), dv_acc + seg.start * lddv, lddv);
    // dP = dO·Vᵀ: column-major dPᵀ (len×bq) = V·dOᵀ
    gemm('T', 'N', seg.len, blk.bq, dvd, T(1), vp + seg.start * ldv, ldv, dop, lddo, T(0), ds + seg.col, r);
  }
  for (int64_t i = 0; i < blk.bq; ++i) {
    const T* orow = op + i * out.stride(2);
    const T* dorow = dop + i * dout.stride(2);
    T delta = 0;
#pragma omp simd reduction(+ : delta)
    for (int64_t c = 0; c < dvd; ++c) delta += orow[c] * dorow[c];
    if (dlse) {  // an lse gradient enters as P ∘ dlse: δ −= dlse
      const T g = dlse[i * lse.stride(2)];
      if (std::isfinite(g)) delta -= g;
    }
    T* dsrow = ds + i * r;
    const T* prow = p + i * r;
#pragma omp simd
    for (int64_t j = 0; j < r; ++j) dsrow[j] = prow[j] * (dsrow[j] - delta) * scale;
  }
  for (size_t i = 0; i < keys.segs.size(); ++i) {
    const Segment& seg = keys.segs[i];
    // dQ = dS·K: column-major dQᵀ (d×bq) = Kᵀ·dSᵀ, summed over the segments
    gemm('N', 'N', d, blk.bq, seg.len, T(1), kp + seg.start * ldk, ldk, ds + seg.col, r, T(i == 0 ? 0 : 1), dqp,
         dq.stride(2));
    // dK += dSᵀ·Q: column-major dKᵀ (d×len) += Qᵀ·dS
    gemm('N', 'T', d, seg.len, blk.bq, T(1), qp, q.stride(2), ds + seg.col, r, T(1), dk + seg.start * lddk, lddk);
  }
}

template <typename T>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                   const at::Tensor& lse, const at::Tensor& dout, const T* dlse, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv, const Work& work, double scale) {
  const int64_t B = q.size(0), Hq = q.size(1), Hkv = k.size(1), group = Hq / Hkv, n = work.blocks.size();
  const int64_t units = B * Hkv, threads = at::get_num_threads();
  // chunks per (batch, kv head): 1 when the units share out evenly over the threads (or are
  // many), else one per thread, so that no thread idles while another works (3 kv heads on 2 threads)
  const bool even = units % threads == 0 || units >= 4 * threads;
  const int64_t chunks = even ? 1 : std::max<int64_t>(1, std::min<int64_t>(n, threads));
  const int64_t nk = k.size(2), d = k.size(3), dvd = v.size(3);
  at::Tensor dk_part, dv_part;
  if (chunks > 1) {
    dk_part = at::zeros({units, chunks, nk, d}, dk.options());
    dv_part = at::zeros({units, chunks, nk, dvd}, dv.options());
  }
  at::parallel_for(0, units * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p_buf, ds_buf;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t u = w / chunks, c = w % chunks, b = u / Hkv, hk = u % Hkv;
      T *dkp, *dvp;
      int64_t lddk, lddv;
      if (chunks > 1) {
        dkp = dk_part.data_ptr<T>() + (u * chunks + c) * nk * d;
        dvp = dv_part.data_ptr<T>() + (u * chunks + c) * nk * dvd;
        lddk = d;
        lddv = dvd;
      } else {
        dkp = dk.data_ptr<T>() + b * dk.stride(0) + hk * dk.stride(1);
        dvp = dv.data_ptr<T>() + b * dv.stride(0) + hk * dv.stride(1);
        lddk = dk.stride(2);
        lddv = dv.stride(2);
      }
      const int64_t lo = n * c / chunks, hi = n * (c + 1) / chunks;
      for (int64_t g = 0; g < group; ++g) {
        for (int64_t i = lo; i < hi; ++i) {
          backward_block<T>(q, k, v, out, lse, dout, dlse, dq, dkp, lddk, dvp, lddv, work, work.blocks[i], b,
                            hk * group + g, T(scale), p_buf, ds_buf);
        }
      }
    }
  });
  if (chunks > 1) {
    dk.copy_(dk_part.sum(1).view({B, Hkv, nk, d}));
    dv.copy_(dv_part.sum(1).view({B, Hkv, nk, dvd}));
  }
}

// The call's work, checked: every block inside q and k, its segments inside k and adding up to
// its keys, every tile index valid and its tile of the block's size.
Work read_work(const at::Tensor& q, const at::Tensor& k, const at::Tensor& blocks, const at::Tensor& segments,
               std::vector<at::Tensor> tiles) {
  TORCH_CHECK(blocks.device().is_cpu() && segments.device().is_cpu(), "blocks, segments: CPU tensors");
  Work work{read_blocks(blocks), read_segments(segments), std::move(tiles)};
  const int64_t nt = work.tiles.size(), ns = work.segments.size(), nk = k.size(2);
  for (const Segment& seg : work.segments) {
    TORCH_CHECK(seg.start >= 0 && seg.len > 0 && seg.start + seg.len <= nk, "segment keys outside k");
  }
  for (const Block& b : work.blocks) {
    TORCH_CHECK(b.q0 >= 0 && b.bq > 0 && b.q0 + b.bq <= q.size(2), "block rows outside q");
    if (b.nseg == 0) {
      TORCH_CHECK(b.k0 >= 0 && b.klen > 0 && b.k0 + b.klen <= nk, "block keys outside k");
    } else {
      TORCH_CHECK(b.seg0 >= 0 && b.nseg > 0 && b.seg0 + b.nseg <= ns, "block segments outside segments");
      int64_t total = 0;
      for (int64_t i = 0; i < b.nseg; ++i) total += work.segments[b.seg0 + i].len;
      TORCH_CHECK(total == b.klen, "a block's segments add up to other than its keys");
    }
    TORCH_CHECK(b.tile >= -1 && b.tile < nt, "block tile index");
    if (b.tile >= 0) {
      const at::Tensor& t = work.tiles[b.tile];
      TORCH_CHECK(b.trow >= 0 && b.trow + b.bq <= t.size(2) && t.size(3) == b.klen, "tile size differs from its block's");
      TORCH_CHECK((t.size(0) == 1 || t.size(0) == q.size(0)) && (t.size(1) == 1 || t.size(1) == q.size(1)),
                  "tile batch or head size");
    }
  }
  return work;
}

// A matrix the BLAS products read or write with the row stride as leading dimension: on the CPU,
// of q's dtype, the last dim contiguous, rows apart by at least a row (BLAS refuses less) and a
// stride that fits its int arguments.
void check_matrix(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == 4, name, ": expected a 4-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, ": expected dtype ", q.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) <= 1, name, ": the last dim must be contiguous");
  TORCH_CHECK(t.size(2) <= 1 || t.stride(2) >= std::max<int64_t>(1, t.size(3)), name,
              ": rows must not overlap (row stride ", t.stride(2), " < ", t.size(3), ")");
  TORCH_CHECK(t.stride(2) <= std::numeric_limits<int>::max() && t.size(2) <= std::numeric_limits<int>::max() &&
                  t.size(3) <= std::numeric_limits<int>::max(),
              name, ": too large for the BLAS products");
}

void check_sizes(const at::Tensor& t, at::IntArrayRef want, const char* name) {
  TORCH_CHECK(t.sizes() == want, name, ": expected shape ", want, ", got ", t.sizes());
}

// q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv): one dtype, float32 or float64, on the
// CPU, Hkv dividing Hq; tiles contiguous 4-D CPU tensors of q's dtype.
void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::vector<at::Tensor>& tiles) {
  check_matrix(q, q, "q");
  check_matrix(k, q, "k");
  check_matrix(v, q, "v");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "q: float32 or float64 only, got ",
              q.scalar_type());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), "k: expected shape (B=", q.size(0),
              ", Hkv, Nk, D=", q.size(3), "), got ", k.sizes());
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "k: Hkv = ", k.size(1), " must divide Hq = ", q.size(1));
  TORCH_CHECK(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2), "v: expected shape (",
              k.size(0), ", ", k.size(1), ", ", k.size(2), ", Dv) like k's, got ", v.sizes());
  for (const auto& t : tiles) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == q.scalar_type() && t.dim() == 4 && t.is_contiguous(),
                "tiles: contiguous 4-D CPU tensors of q's dtype");
  }
}

// out (B, Hq, Nq, Dv) and lse (B, Hq, Nq), of q's dtype, on the CPU.
void check_outputs(const at::Tensor& q, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse) {
  check_matrix(out, q, "out");
  check_sizes(out, {q.size(0), q.size(1), q.size(2), v.size(3)}, "out");
  TORCH_CHECK(lse.device().is_cpu() && lse.scalar_type() == q.scalar_type(), "lse: a CPU tensor of q's dtype");
  check_sizes(lse, {q.size(0), q.size(1), q.size(2)}, "lse");
}

void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor out, at::Tensor lse,
             const at::Tensor& blocks, const at::Tensor& segments, std::vector<at::Tensor> tiles, double scale) {
  check_inputs(q, k, v, tiles);
  check_outputs(q, v, out, lse);
  const Work work = read_work(q, k, blocks, segments, std::move(tiles));
  if (q.scalar_type() == at::kFloat) {
    forward_impl<float>(q, k, v, out, lse, work, scale);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kDouble, "float32 or float64 only");
    forward_impl<double>(q, k, v, out, lse, work, scale);
  }
}

void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
              const at::Tensor& lse, const at::Tensor& dout, const std::optional<at::Tensor>& dlse, at::Tensor dq,
              at::Tensor dk, at::Tensor dv, const at::Tensor& blocks, const at::Tensor& segments,
              std::vector<at::Tensor> tiles, double scale) {
  check_inputs(q, k, v, tiles);
  check_outputs(q, v, out, lse);
  check_matrix(dout, q, "grad_out");
  check_sizes(dout, out.sizes(), "grad_out");
  check_matrix(dq, q, "dq");
  check_sizes(dq, q.sizes(), "dq");
  check_matrix(dk, q, "dk");
  check_sizes(dk, k.sizes(), "dk");
  check_matrix(dv, q, "dv");
  check_sizes(dv, v.sizes(), "dv");
  TORCH_CHECK(!dlse || (dlse->device().is_cpu() && dlse->scalar_type() == q.scalar_type() &&
                        dlse->sizes() == lse.sizes() && dlse->strides() == lse.strides()),
              "grad_lse: a CPU tensor of lse's dtype, shape and strides");
  const Work work = read_work(q, k, blocks, segments, std::move(tiles));
  if (q.scalar_type() == at::kFloat) {
    backward_impl<float>(q, k, v, out, lse, dout, dlse ? dlse->data_ptr<float>() : nullptr, dq, dk, dv, work, scale);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kDouble, "float32 or float64 only");
    backward_impl<double>(q, k, v, out, lse, dout, dlse ? dlse->data_ptr<double>() : nullptr, dq, dk, dv, work,
                          scale);
  }
}

// The keys each block computes for batch row b and head h: int64 (n, 2), the first and one
// past the last key position (of its first and last segment).
at::Tensor key_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& blocks, const at::Tensor& segments,
                      std::vector<at::Tensor> tiles, int64_t b, int64_t h) {
  check_inputs(q, k, k, tiles);
  TORCH_CHECK(b >= 0 && b < q.size(0) && h >= 0 && h < q.size(1), "b, h: outside q's batch and heads");
  const Work work = read_work(q, k, blocks, segments, std::move(tiles));
  auto out = at::zeros({static_cast<int64_t>(work.blocks.size()), 2}, at::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < work.blocks.size(); ++i) {
    const Block& blk = work.blocks[i];
    const Keys keys = q.scalar_type() == at::kFloat ? block_keys(tile_ptr<float>(work, blk, b, h), blk, work)
                                                    : block_keys(tile_ptr<double>(work, blk, b, h), blk, work);
    if (!keys.segs.empty()) {
      p[2 * i] = keys.segs.front().start;
      p[2 * i + 1] = keys.segs.back().start + keys.segs.back().len;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(qkv_blockwise, m) {
  m.def("forward(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor blocks, Tensor segments, Tensor[] tiles, float scale) -> ()");
  m.def("backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, Tensor(a!) dq, Tensor(b!) dk, Tensor(c!) dv, Tensor blocks, Tensor segments, Tensor[] tiles, float scale) -> ()");
  m.def("key_ranges(Tensor q, Tensor k, Tensor blocks, Tensor segments, Tensor[] tiles, int b, int h) -> Tensor");
  m.impl("forward", c10::DispatchKey::CPU, TORCH_FN(forward));
  m.impl("key_ranges", c10::DispatchKey::CPU, TORCH_FN(key_ranges));
  m.impl("backward", c10::DispatchKey::CPU, TORCH_FN(backward));
}
