// The book's update_mini_batch over a block of mini-batches, as one op: torch.ops.manualbp.sgd_block.
//
// The same ATen calls as torch_manualbp/network.py's update_mini_batch, in the same order, so it makes the same
// updates bit for bit; what it saves is Python's per-op cost (about as long as each op itself at mini-batches of
// 10). Built and loaded by torch_manualbp/sgd.py (torch.utils.cpp_extension, cached); any device ATen runs on.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

// One SGD step per mini-batch of x, in order, in place on weights and biases; the cost C0 of each before its update.
at::Tensor sgd_block(at::TensorList weights, at::TensorList biases, const at::Tensor& x, const at::Tensor& y,
                     double eta, int64_t mini_batch_size, c10::string_view cost, double weight_decay) {
  const bool cross_entropy = cost == "cross_entropy";
  TORCH_CHECK(cross_entropy || cost == "quadratic", "sgd_block: cost must be 'quadratic' or 'cross_entropy'");
  TORCH_CHECK(mini_batch_size > 0, "sgd_block: mini_batch_size must be positive");
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "sgd_block: one bias per weight");
  const size_t layers = weights.size();
  const int64_t rows = x.size(0);
  const at::Tensor ones = at::ones({mini_batch_size}, x.options());
  const at::Tensor zero = at::zeros({}, x.options());
  std::vector<at::Tensor> a(layers + 1), delta(layers), costs;
  costs.reserve((rows + mini_batch_size - 1) / mini_batch_size);
  for (int64_t start = 0; start < rows; start += mini_batch_size) {
    const int64_t m = std::min(mini_batch_size, rows - start);
    const at::Tensor y_m = y.narrow(0, start, m);
    a[0] = x.narrow(0, start, m);
    at::Tensor z;
    for (size_t l = 0; l < layers; ++l) {
      z = at::addmm(biases[l], a[l], weights[l].t());  // zˡ = aˡ⁻¹ Wˡᵀ + bˡ
      a[l + 1] = at::sigmoid(z);                       // aˡ = σ(zˡ)
    }
    const at::Tensor output_minus_y = a[layers] - y_m;  // aᴸ − y
    if (cross_entropy) {
      costs.push_back((at::logaddexp(z, zero) - y_m * z).sum(-1).mean());  // C = (1/m) Σ_x Σ_j [softplus(zᴸ) − y zᴸ]
      delta[layers - 1] = output_minus_y;                                  // (BP1) δᴸ = aᴸ − y
    } else {
      costs.push_back(output_minus_y.square().sum() * (0.5 / m));                      // C = 1/(2m) Σ_x ‖aᴸ − y‖²
      delta[layers - 1] = at::sigmoid_backward(output_minus_y, a[layers]);           // (BP1) δᴸ = (aᴸ − y) ⊙ σ'(zᴸ)
    }
    for (size_t l = layers - 1; l > 0; --l) {
      delta[l - 1] = at::sigmoid_backward(at::mm(delta[l], weights[l]), a[l]);  // (BP2) δˡ = (δˡ⁺¹ Wˡ⁺¹) ⊙ σ'(zˡ)
    }
    const double step = eta / m;
    for (size_t l = 0; l < layers; ++l) {
      if (weight_decay != 0) {
        weights[l].mul_(1 - eta * weight_decay);  // L2: w → (1 − ηλ/n) w
      }
      weights[l].addmm_(delta[l].t(), a[l], 1, -step);             // (BP4) fused: W −= (η/m) δᵀ aˡ⁻¹
      biases[l].addmv_(delta[l].t(), ones.narrow(0, 0, m), 1, -step);  // (BP3) fused: b −= (η/m) Σ_x δ_x
    }
  }
  return at::stack(costs);
}

}  // namespace

TORCH_LIBRARY(manualbp, m) {
  m.def(
      "sgd_block(Tensor(a!)[] weights, Tensor(b!)[] biases, Tensor x, Tensor y, float eta, int mini_batch_size, "
      "str cost, float weight_decay) -> Tensor");
}

TORCH_LIBRARY_IMPL(manualbp, CompositeExplicitAutograd, m) { m.impl("sgd_block", &sgd_block); }
