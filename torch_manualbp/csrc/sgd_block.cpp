// The book's update_mini_batch over a block of mini-batches, as one op: torch.ops.manualbp.sgd_block.
//
// The steps of torch_manualbp/network.py's update_mini_batch: the matrix products are ATen's (addmm, mm, addmm_,
// addmv_: BLAS), the elementwise equations on the CPU are plain loops here, since at mini-batches of 10 an ATen
// call's fixed cost (dispatch, TensorIterator) is larger than its arithmetic; on other devices they are ATen's ops.
// Built and loaded by torch_manualbp/sgd.py (torch.utils.cpp_extension, cached).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Whether the plain loops below serve t: contiguous float or double on the CPU
bool on_cpu(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  return t.device().is_cpu() && t.is_contiguous() && (dtype == at::kFloat || dtype == at::kDouble);
}

// aˡ = σ(zˡ), a new tensor
at::Tensor sigmoid_of(const at::Tensor& z) {
  if (!on_cpu(z)) return at::sigmoid(z);
  at::Tensor a = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sigmoid", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* ap = a.data_ptr<scalar_t>();
    for (int64_t i = 0, n = z.numel(); i < n; ++i) ap[i] = scalar_t(1) / (scalar_t(1) + std::exp(-zp[i]));
  });
  return a;
}

// (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ), σ'(zˡ) = aˡ(1 − aˡ), in place on the product δˡ⁺¹ Wˡ⁺¹
at::Tensor times_sigmoid_prime(at::Tensor grad_a, const at::Tensor& a) {
  if (!on_cpu(grad_a) || !on_cpu(a)) return at::sigmoid_backward(grad_a, a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sigmoid_prime", [&] {
    scalar_t* gp = grad_a.data_ptr<scalar_t>();
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) gp[i] *= (scalar_t(1) - ap[i]) * ap[i];
  });
  return grad_a;
}

// dropout: aˡ = σ(zˡ) ⊙ mˡ, in place, the removed neurons' activations (and so their σ', their δ) 0
void drop_out(at::Tensor& a, const at::Tensor& mask) {
  if (!on_cpu(a) || !on_cpu(mask)) {
    a.mul_(mask);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "dropout", [&] {
    scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* mp = mask.const_data_ptr<scalar_t>();
    for (int64_t i = 0, n = a.numel(), h = mask.numel(); i < n; ++i) ap[i] *= mp[i % h];
  });
}

// Chapter 3's regularisation of the weights, in place, before the step's gradient; step = ηλ/n
void regularize(at::Tensor& weight, double step, bool l1) {
  if (!l1) {
    weight.mul_(1 - step);  // L2: w → (1 − ηλ/n) w
  } else if (!on_cpu(weight)) {
    weight.sub_(at::sign(weight) * step);  // L1: w → w − (ηλ/n) sgn(w)
  } else {
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "l1", [&] {
      scalar_t* wp = weight.data_ptr<scalar_t>();
      const scalar_t s = static_cast<scalar_t>(step);
      for (int64_t i = 0, n = weight.numel(); i < n; ++i) {
        wp[i] -= scalar_t((wp[i] > 0) - (wp[i] < 0)) * s;  // L1: w → w − (ηλ/n) sgn(w), sgn(0) = 0
      }
    });
  }
}

// (BP1) the output error δᴸ; the mini-batch's cost C before the update goes into costs[s]
at::Tensor output_error(const at::Tensor& z, const at::Tensor& a, const at::Tensor& y, bool cross_entropy,
                        const at::Tensor& costs, int64_t s) {
  const int64_t m = z.size(0);
  if (!on_cpu(z) || !on_cpu(a) || !on_cpu(y)) {
    const at::Tensor output_minus_y = a - y;  // aᴸ − y
    if (cross_entropy) {
      costs[s].copy_((at::logaddexp(z, at::zeros({}, z.options())) - y * z).sum(-1).mean());
      return output_minus_y;  // (BP1) δᴸ = aᴸ − y
    }
    costs[s].copy_(output_minus_y.square().sum() * (0.5 / m));
    return at::sigmoid_backward(output_minus_y, a);  // (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)
  }
  at::Tensor delta = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "output_error", [&] {
    const scalar_t *zp = z.const_data_ptr<scalar_t>(), *ap = a.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dp = delta.data_ptr<scalar_t>();
    scalar_t sum = 0;
    for (int64_t i = 0, n = a.numel(); i < n; ++i) {
      const scalar_t output_minus_y = ap[i] - yp[i];  // aᴸ − y
      if (cross_entropy) {
        // C_x = Σ_j [softplus(zᴸ_j) − y_j zᴸ_j], softplus without overflow
        sum += std::max(zp[i], scalar_t(0)) + std::log1p(std::exp(-std::abs(zp[i]))) - yp[i] * zp[i];
        dp[i] = output_minus_y;  // (BP1) δᴸ = aᴸ − y
      } else {
        sum += output_minus_y * output_minus_y;  // C_x = ½‖aᴸ − y‖²
        dp[i] = output_minus_y * (scalar_t(1) - ap[i]) * ap[i];  // (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)
      }
    }
    costs.data_ptr<scalar_t>()[s] = cross_entropy ? sum / scalar_t(m) : sum * scalar_t(0.5 / m);
  });
  return delta;
}

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
  const size_t layers = weights.size();
  const int64_t rows = x.size(0);
  const at::Tensor x_c = x.contiguous(), y_c = y.contiguous();
  const at::Tensor ones = at::ones({mini_batch_size}, x.options());
  at::Tensor costs = at::empty({(rows + mini_batch_size - 1) / mini_batch_size}, x.options());
  std::vector<at::Tensor> a(layers + 1), delta(layers);
  for (int64_t start = 0, s = 0; start < rows; start += mini_batch_size, ++s) {
    const int64_t m = std::min(mini_batch_size, rows - start);
    a[0] = x_c.narrow(0, start, m);
    at::Tensor z;
    for (size_t l = 0; l < layers; ++l) {
      z = at::addmm(biases[l], a[l], weights[l].t());  // zˡ = aˡ⁻¹ Wˡᵀ + bˡ
      a[l + 1] = sigmoid_of(z);                        // aˡ = σ(zˡ)
      if (!masks.empty() && l + 1 < layers) drop_out(a[l + 1], masks[l][s]);  // dropout: aˡ = σ(zˡ) ⊙ mˡ
    }
    delta[layers - 1] = output_error(z, a[layers], y_c.narrow(0, start, m), cross_entropy, costs, s);  // (BP1)
    for (size_t l = layers - 1; l > 0; --l) {
      delta[l - 1] = times_sigmoid_prime(at::mm(delta[l], weights[l]), a[l]);  // (BP2), Wˡ⁺¹ before its update
    }
    const double step = eta / m;
    for (size_t l = 0; l < layers; ++l) {
      if (weight_decay != 0) {
        at::Tensor weight = weights[l];
        regularize(weight, eta * weight_decay, l1);  // L2 or L1, from w before this step's update
      }
      weights[l].addmm_(delta[l].t(), a[l], 1, -step);                 // (BP4) fused: W −= (η/m) δᵀ aˡ⁻¹
      biases[l].addmv_(delta[l].t(), ones.narrow(0, 0, m), 1, -step);  // (BP3) fused: b −= (η/m) Σ_x δ_x
    }
  }
  return costs;
}

}  // namespace

TORCH_LIBRARY(manualbp, m) {
  m.def(
      "sgd_block(Tensor(a!)[] weights, Tensor(b!)[] biases, Tensor x, Tensor y, float eta, int mini_batch_size, "
      "str cost, float weight_decay, str regularization, Tensor[] masks) -> Tensor");
}

TORCH_LIBRARY_IMPL(manualbp, CompositeExplicitAutograd, m) { m.impl("sgd_block", &sgd_block); }
