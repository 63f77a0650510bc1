// The book's update_mini_batch over a block of mini-batches, as one op: torch.ops.manualbp.sgd_block.
//
// The steps of torch_manualbp/network.py's update_mini_batch, one mini-batch after another. On the CPU (float or
// double, torch built with MKL, as its x86 wheels are) the loop calls nothing of ATen: its buffers (z, a, δ of every
// layer) are allocated once per call, the matrix products are direct calls of the BLAS that torch itself uses
// (MKL's sgemm_/dgemm_, exported by libtorch_cpu) but for the float32 forward product on a CPU with AVX2 (a kernel
// here, see dots), the elementwise equations plain loops; at mini-batches of 10 an ATen call's fixed cost
// (dispatch, allocation, TensorIterator) is larger than its arithmetic. That is the op's only path: elsewhere (CUDA,
// tensors not contiguous, a torch without MKL) the engine runs the eager step of torch_manualbp/network.py instead
// (sgd.py's cpu_loop_refusal says which), so the equations are written twice, here and in equations.py, not three
// times. Built and loaded by torch_manualbp/sgd.py (torch.utils.cpp_extension, cached).
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#if AT_MKL_ENABLED()
// The Fortran BLAS of torch's MKL (LP64), column-major
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}
#endif

namespace {

#if AT_MKL_ENABLED()
// C = alpha op(A) op(B) + beta C for row-major matrices: the column-major BLAS on their transposes, Cᵀ = op(B)ᵀ op(A)ᵀ
void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
          int ldb, float beta, float* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  sgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

void gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
          int ldb, double beta, double* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  dgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The forward product zˡ += aˡ⁻¹ Wˡᵀ in float32 by AVX2 and FMA, which the CPU is asked for at load time (the build
// targets any x86-64): at mini-batches of 10 MKL's sgemm_ spends more time packing the operands than multiplying
// (measured: the epoch 25-30% shorter with this). Dot products of rows, I examples by J neurons at a time, I·J sums
// in registers, each finished in the tail of the row.
template <int I, int J>
__attribute__((target("avx2,fma"))) void dots(const float* a, const float* w, int k, float* z, int ldz) {
  __m256 sum[I][J];
  for (int i = 0; i < I; ++i)
    for (int j = 0; j < J; ++j) sum[i][j] = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= k; c += 8) {
    __m256 w_c[J];
    for (int j = 0; j < J; ++j) w_c[j] = _mm256_loadu_ps(w + j * k + c);
    for (int i = 0; i < I; ++i) {
      const __m256 a_c = _mm256_loadu_ps(a + i * k + c);
      for (int j = 0; j < J; ++j) sum[i][j] = _mm256_fmadd_ps(a_c, w_c[j], sum[i][j]);
    }
  }
  for (int i = 0; i < I; ++i) {
    for (int j = 0; j < J; ++j) {
      __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum[i][j]), _mm256_extractf128_ps(sum[i][j], 1));
      half = _mm_hadd_ps(half, half);
      float total = _mm_cvtss_f32(_mm_hadd_ps(half, half));
      for (int t = c; t < k; ++t) total += a[i * k + t] * w[j * k + t];
      z[i * ldz + j] += total;
    }
  }
}

// z (m×n) += a (m×k) wᵀ (w: n×k), row-major, float32, AVX2 and FMA
__attribute__((target("avx2,fma"))) void forward_avx2(int m, int n, int k, const float* a, const float* w, float* z) {
  int j = 0;
  for (; j + 2 <= n; j += 2) {
    int i = 0;
    for (; i + 5 <= m; i += 5) dots<5, 2>(a + i * k, w + j * k, k, z + i * n + j, n);
    for (; i < m; ++i) dots<1, 2>(a + i * k, w + j * k, k, z + i * n + j, n);
  }
  for (; j < n; ++j) {
    int i = 0;
    for (; i + 5 <= m; i += 5) dots<5, 1>(a + i * k, w + j * k, k, z + i * n + j, n);
    for (; i < m; ++i) dots<1, 1>(a + i * k, w + j * k, k, z + i * n + j, n);
  }
}

bool has_avx2_and_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
void forward_avx2(int, int, int, const float*, const float*, float*) {}
bool has_avx2_and_fma() { return false; }
#endif
const bool kAvx2 = has_avx2_and_fma();

// z (m×n) += a (m×k) wᵀ (w: n×k), row-major: the forward product
void forward_product(int m, int n, int k, const float* a, const float* w, float* z) {
  if (kAvx2) {
    forward_avx2(m, n, k, a, w, z);
  } else {
    gemm(false, true, m, n, k, 1.0f, a, k, w, k, 1.0f, z, n);
  }
}

void forward_product(int m, int n, int k, const double* a, const double* w, double* z) {
  gemm(false, true, m, n, k, 1.0, a, k, w, k, 1.0, z, n);
}

// Whether the CPU loop serves t: a contiguous CPU tensor of dtype
bool plain(const at::Tensor& t, at::ScalarType dtype) {
  return t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype;
}

// The whole block on the CPU, writing costs[s] for each step s: no ATen call inside the loop over mini-batches
template <typename scalar_t>
void cpu_block(at::TensorList weights, at::TensorList biases, const at::Tensor& x, const at::Tensor& y, double eta,
               int64_t mini_batch_size, bool cross_entropy, double weight_decay, bool l1, at::TensorList masks,
               at::Tensor& costs) {
  const size_t layers = weights.size();
  std::vector<int> h(layers + 1);  // the layer sizes, h[0] the input's
  h[0] = static_cast<int>(x.size(1));
  std::vector<scalar_t*> w(layers), b(layers), a(layers + 1), delta(layers);
  std::vector<const scalar_t*> mask(masks.size());
  int64_t buffer = 0;
  for (size_t l = 0; l < layers; ++l) {
    h[l + 1] = static_cast<int>(weights[l].size(0));
    w[l] = weights[l].data_ptr<scalar_t>();
    b[l] = biases[l].data_ptr<scalar_t>();
    buffer += 2 * mini_batch_size * h[l + 1];
  }
  for (size_t l = 0; l < masks.size(); ++l) mask[l] = masks[l].const_data_ptr<scalar_t>();
  const int out = h[layers];
  at::Tensor workspace = at::empty({buffer + mini_batch_size * out}, x.options());  // aˡ and δˡ of each layer, zᴸ
  scalar_t* next = workspace.data_ptr<scalar_t>();
  for (size_t l = 0; l < layers; ++l) {
    a[l + 1] = next;
    delta[l] = next + mini_batch_size * h[l + 1];
    next += 2 * mini_batch_size * h[l + 1];
  }
  scalar_t* z = next;  // zᴸ, which the cross-entropy's value needs
  const scalar_t *xp = x.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
  scalar_t* cost = costs.data_ptr<scalar_t>();
  const int64_t rows = x.size(0);
  for (int64_t start = 0, s = 0; start < rows; start += mini_batch_size, ++s) {
    const int m = static_cast<int>(std::min(mini_batch_size, rows - start));
    a[0] = const_cast<scalar_t*>(xp + start * h[0]);  // read only
    for (size_t l = 0; l < layers; ++l) {
      const int n_in = h[l], n_out = h[l + 1];
      scalar_t* zl = l + 1 < layers ? a[l + 1] : z;  // a hidden layer's z becomes its a in place
      for (int i = 0; i < m; ++i) std::copy(b[l], b[l] + n_out, zl + i * n_out);
      forward_product(m, n_out, n_in, a[l], w[l], zl);  // zˡ = aˡ⁻¹ Wˡᵀ + bˡ
      scalar_t* al = a[l + 1];
      for (int i = 0; i < m * n_out; ++i) al[i] = scalar_t(1) / (scalar_t(1) + std::exp(-zl[i]));  // aˡ = σ(zˡ)
      if (!masks.empty() && l + 1 < layers) {
        const scalar_t* ml = mask[l] + s * n_out;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n_out; ++j) al[i * n_out + j] *= ml[j];  // dropout: aˡ = σ(zˡ) ⊙ mˡ
        }
      }
    }
    const scalar_t *aL = a[layers], *y_m = yp + start * out;
    scalar_t* dL = delta[layers - 1];
    scalar_t sum = 0;
    for (int i = 0; i < m * out; ++i) {
      const scalar_t output_minus_y = aL[i] - y_m[i];  // aᴸ − y
      if (cross_entropy) {
        // C_x = Σ_j [softplus(zᴸ_j) − y_j zᴸ_j], softplus without overflow
        sum += std::max(z[i], scalar_t(0)) + std::log1p(std::exp(-std::abs(z[i]))) - y_m[i] * z[i];
        dL[i] = output_minus_y;  // (BP1) δᴸ = aᴸ − y
      } else {
        sum += output_minus_y * output_minus_y;                  // C_x = ½‖aᴸ − y‖²
        dL[i] = output_minus_y * (scalar_t(1) - aL[i]) * aL[i];  // (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)
      }
    }
    cost[s] = cross_entropy ? sum / scalar_t(m) : sum * scalar_t(0.5 / m);
    for (size_t l = layers - 1; l > 0; --l) {
      const int n_in = h[l], n_out = h[l + 1];
      gemm(false, false, m, n_in, n_out, 1, delta[l], n_out, w[l], n_in, 0, delta[l - 1], n_in);  // δˡ⁺¹ Wˡ⁺¹
      const scalar_t* al = a[l];
      scalar_t* dl = delta[l - 1];
      for (int i = 0; i < m * n_in; ++i) dl[i] *= (scalar_t(1) - al[i]) * al[i];  // (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ)
    }
    const scalar_t step = static_cast<scalar_t>(eta / m), decay = static_cast<scalar_t>(eta * weight_decay);
    for (size_t l = 0; l < layers; ++l) {
      const int n_in = h[l], n_out = h[l + 1];
      scalar_t* wl = w[l];
      if (weight_decay != 0 && l1) {
        for (int i = 0; i < n_out * n_in; ++i) {
          wl[i] -= scalar_t((wl[i] > 0) - (wl[i] < 0)) * decay;  // L1: w → w − (ηλ/n) sgn(w), sgn(0) = 0
        }
      } else if (weight_decay != 0) {
        const scalar_t keep = static_cast<scalar_t>(1 - eta * weight_decay);
        for (int i = 0; i < n_out * n_in; ++i) wl[i] *= keep;  // L2: w → (1 − ηλ/n) w
      }
      gemm(true, false, n_out, n_in, m, -step, delta[l], n_out, a[l], n_in, 1, wl, n_in);  // (BP4) W −= (η/m) δᵀ aˡ⁻¹
      const scalar_t* dl = delta[l];
      for (int j = 0; j < n_out; ++j) {
        scalar_t sum_j = 0;
        for (int i = 0; i < m; ++i) sum_j += dl[i * n_out + j];
        b[l][j] -= step * sum_j;  // (BP3) b −= (η/m) Σ_x δ_x
      }
    }
  }
}
#endif

// One SGD step per mini-batch of x, in order, in place on weights and biases; the cost C0 of each before its update.
// masks: dropout, none or one (steps, H_l) per hidden layer, row s the mask of step s.
at::Tensor sgd_block(at::TensorList weights, at::TensorList biases, const at::Tensor& x, const at::Tensor& y,
                     double eta, int64_t mini_batch_size, c10::string_view cost, double weight_decay,
                     c10::string_view regularization, at::TensorList masks) {
  const bool cross_entropy = cost == "cross_entropy";
  TORCH_CHECK(cross_entropy || cost == "quadratic", "sgd_block: cost must be 'quadratic' or 'cross_entropy'");
  const bool l1 = regularization == "l1";
  TORCH_CHECK(l1 || regularization == "l2", "sgd_block: regularization must be 'l2' or 'l1'");
  TORCH_CHECK(masks.empty() || masks.size() + 1 == weights.size(), "sgd_block: one dropout mask per hidden layer");
  TORCH_CHECK(mini_batch_size > 0, "sgd_block: mini_batch_size must be positive");
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "sgd_block: one bias per weight");
  const int64_t rows = x.size(0);
  at::Tensor costs = at::empty({(rows + mini_batch_size - 1) / mini_batch_size}, x.options());
#if AT_MKL_ENABLED()
  const auto dtype = x.scalar_type();
  bool cpu = (dtype == at::kFloat || dtype == at::kDouble) && plain(x, dtype) && plain(y, dtype);
  for (size_t l = 0; l < weights.size(); ++l) cpu = cpu && plain(weights[l], dtype) && plain(biases[l], dtype);
  for (const at::Tensor& m : masks) cpu = cpu && plain(m, dtype);
  TORCH_CHECK(cpu, "sgd_block: every tensor must be a contiguous float or double CPU tensor of x's dtype");
  AT_DISPATCH_FLOATING_TYPES(dtype, "sgd_block", [&] {
    cpu_block<scalar_t>(weights, biases, x, y, eta, mini_batch_size, cross_entropy, weight_decay, l1, masks, costs);
  });
#else
  TORCH_CHECK(false, "sgd_block: this torch is built without MKL, whose BLAS the CPU loop calls");
#endif
  return costs;
}

}  // namespace

TORCH_LIBRARY(manualbp, m) {
  m.def(
      "sgd_block(Tensor(a!)[] weights, Tensor(b!)[] biases, Tensor x, Tensor y, float eta, int mini_batch_size, "
      "str cost, float weight_decay, str regularization, Tensor[] masks) -> Tensor");
}

TORCH_LIBRARY_IMPL(manualbp, CompositeExplicitAutograd, m) { m.impl("sgd_block", &sgd_block); }
