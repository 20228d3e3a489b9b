// CPU decoding with the matrices of the linear layers stored in float32 or float16 and everything else, every
// sum included, in float32 (tinystories/precision.py):
// - linear: y = x W^T + b, for the few rows of a decoding step;
// - decode_step: Model.hidden_states (model/model.py) of one new token of one sequence, reading and
//   extending its KV cache, in one call.
//
// Decoding one token reads every weight once, so its time is the time to stream the weights from memory: with
// float16 weights, half the bytes of float32, nearly half the time. float16 weights are converted to float32 as
// they are loaded, so the result is the float32 computation of the rounded weights, up to summation order.
// Output rows are split between threads; every thread reads its own rows of W once. decode_step exists because
// the ~70 small operations around the products cost, called one by one from Python, nearly as much time as
// the products themselves; here they cost a few microseconds.
// ATen's Vectorized types give the SIMD code for the instruction set the extension is compiled for
// (tinystories/cpu_kernels.py chooses it from torch's own detection).
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace {

using Floats = at::vec::Vectorized<float>;
using Halves = at::vec::Vectorized<at::Half>;

// `lanes` weights from w, as float32.
Floats load(const float* w) { return Floats::loadu(w); }
Floats load(const at::Half* w) { return at::vec::convert<float>(Halves::loadu(w, Floats::size())); }

// Two accumulators hide the latency of the fused multiply-adds; a scalar loop takes the K % (2 * lanes) tail.
template <typename W>
float dot(const float* x, const W* w, int64_t K) {
  constexpr int64_t lanes = Floats::size();
  Floats even(0), odd(0);
  int64_t k = 0;
  for (; k + 2 * lanes <= K; k += 2 * lanes) {
    even = at::vec::fmadd(load(w + k), Floats::loadu(x + k), even);
    odd = at::vec::fmadd(load(w + k + lanes), Floats::loadu(x + k + lanes), odd);
  }
  float sum = at::vec::vec_reduce_all<float>([](Floats& a, Floats& b) { return a + b; }, even + odd);
  for (; k < K; ++k) sum += static_cast<float>(w[k]) * x[k];
  return sum;
}

// About 32K weights per piece of work given to a thread: fewer, and waking the second thread costs more than it saves.
int64_t grain(int64_t K) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)); }

// y (M, N) = x (M, K) W^T + b (b may be null): each row of W is read once, for all M rows of x.
template <typename W>
void products(const float* x, int64_t M, const W* w, const float* b, float* y, int64_t N, int64_t K) {
  at::parallel_for(0, N, grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t m = 0; m < M; ++m) y[m * N + n] = dot(x + m * K, w + n * K, K) + (b ? b[n] : 0.0f);
    }
  });
}

void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t C, double eps) {
  double mean = 0, variance = 0;
  for (int64_t c = 0; c < C; ++c) mean += x[c];
  mean /= C;
  for (int64_t c = 0; c < C; ++c) variance += (x[c] - mean) * (x[c] - mean);
  const double scale = 1.0 / std::sqrt(variance / C + eps);  // biased variance, as torch's LayerNorm
  for (int64_t c = 0; c < C; ++c) y[c] = static_cast<float>((x[c] - mean) * scale) * weight[c] + bias[c];
}

float gelu(float x, bool tanh_approximation) {
  if (tanh_approximation) {  // GPT-2's "gelu_new"
    const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + std::tanh(inner));
  }
  return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "linear: x must be a contiguous float32 (M, K) tensor");
  TORCH_CHECK(weight.dim() == 2 && (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kFloat) &&
              weight.is_contiguous(), "linear: weight must be a contiguous float16 or float32 (N, K) tensor");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K, "linear: x has ", K, " columns but weight has ", weight.size(1));
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N),
              "linear: bias must be a contiguous float32 tensor of ", N, " values");
  at::Tensor out = at::empty({M, N}, x.options());
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  if (weight.scalar_type() == at::kHalf) {
    products(x.data_ptr<float>(), M, weight.data_ptr<at::Half>(), b, out.data_ptr<float>(), N, K);
  } else {
    products(x.data_ptr<float>(), M, weight.data_ptr<float>(), b, out.data_ptr<float>(), N, K);
  }
  return out;
}

const float* floats(const at::Tensor& t, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel, "decode_step: ", name,
              " must be a contiguous float32 tensor of ", numel, " values");
  return t.data_ptr<float>();
}

template <typename W>
const W* matrix(const at::Tensor& t, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == c10::CppTypeToScalarType<W>::value && t.is_contiguous() && t.numel() == numel,
              "decode_step: ", name, " must be a contiguous tensor of ", numel, " values of the first's type");
  return t.data_ptr<W>();
}

// The final-norm output (C,) for `token` at `position` of row `row` of the cache; its keys and values are stored
// there. layers holds 12 tensors per block, in Block's order: attention norm weight and bias, qkv weight and bias,
// out_proj weight and bias, mlp norm weight and bias, fc weight and bias, proj weight and bias (absent biases
// as zeros), the matrices all float16 or all float32. keys and values: (n_layer, rows, n_head, max_len, head size).
template <typename W>
at::Tensor step(int64_t token, int64_t position, int64_t row, const at::Tensor& token_embedding,
                const at::Tensor& position_embedding, at::TensorList layers, const at::Tensor& final_weight,
                const at::Tensor& final_bias, const at::Tensor& keys, const at::Tensor& values, int64_t n_head,
                double eps, bool tanh_gelu) {
  const int64_t V = token_embedding.size(0), C = token_embedding.size(1), L = keys.size(0);
  const int64_t H = n_head, D = C / H, S = keys.size(3), F = 4 * C;
  TORCH_CHECK(keys.dim() == 5 && keys.sizes() == values.sizes() && keys.size(2) == H && keys.size(4) == D,
              "decode_step: keys and values must be (n_layer, rows, n_head, max_len, head size)");
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == 12 * L, "decode_step: 12 tensors per layer expected");
  TORCH_CHECK(0 <= token && token < V && 0 <= position && position < std::min(S, position_embedding.size(0)) &&
              0 <= row && row < keys.size(1), "decode_step: token, position or row out of range");
  floats(keys, keys.numel(), "keys");  // checked as the inputs are, then written
  floats(values, values.numel(), "values");
  float* key_cache = keys.data_ptr<float>();
  float* value_cache = values.data_ptr<float>();
  std::vector<float> x(C), h(C), qkv(3 * C), y(C), f(F), out(C);
  const float* embedding = floats(token_embedding, V * C, "token_embedding") + token * C;
  const float* place = floats(position_embedding, position_embedding.size(0) * C, "position_embedding") + position * C;
  for (int64_t c = 0; c < C; ++c) x[c] = embedding[c] + place[c];
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* p = &layers[12 * l];
    layer_norm(x.data(), floats(p[0], C, "norm weight"), floats(p[1], C, "norm bias"), h.data(), C, eps);
    products(h.data(), 1, matrix<W>(p[2], 3 * C * C, "qkv weight"), floats(p[3], 3 * C, "qkv bias"), qkv.data(), 3 * C,
             C);
    at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> weights(position + 1);
      for (int64_t head = begin; head < end; ++head) {
        const int64_t base = ((l * keys.size(1) + row) * H + head) * S * D;
        float* k = key_cache + base;
        float* v = value_cache + base;
        const float* q = qkv.data() + head * D;
        std::copy_n(qkv.data() + C + head * D, D, k + position * D);
        std::copy_n(qkv.data() + 2 * C + head * D, D, v + position * D);
        float largest = -INFINITY;
        for (int64_t s = 0; s <= position; ++s) {
          weights[s] = dot(q, k + s * D, D) * scale;
          largest = std::max(largest, weights[s]);
        }
        float total = 0;
        for (int64_t s = 0; s <= position; ++s) total += weights[s] = std::exp(weights[s] - largest);
        float* yh = y.data() + head * D;
        std::fill_n(yh, D, 0.0f);
        for (int64_t s = 0; s <= position; ++s) {
          const float weight = weights[s] / total;
          for (int64_t d = 0; d < D; ++d) yh[d] += weight * v[s * D + d];
        }
      }
    });
    products(y.data(), 1, matrix<W>(p[4], C * C, "out_proj weight"), floats(p[5], C, "out_proj bias"), out.data(), C,
             C);
    for (int64_t c = 0; c < C; ++c) x[c] += out[c];
    layer_norm(x.data(), floats(p[6], C, "norm weight"), floats(p[7], C, "norm bias"), h.data(), C, eps);
    products(h.data(), 1, matrix<W>(p[8], F * C, "fc weight"), floats(p[9], F, "fc bias"), f.data(), F, C);
    for (int64_t i = 0; i < F; ++i) f[i] = gelu(f[i], tanh_gelu);
    products(f.data(), 1, matrix<W>(p[10], C * F, "proj weight"), floats(p[11], C, "proj bias"), out.data(), C, F);
    for (int64_t c = 0; c < C; ++c) x[c] += out[c];
  }
  at::Tensor hidden = at::empty({C}, token_embedding.options());
  layer_norm(x.data(), floats(final_weight, C, "final norm weight"), floats(final_bias, C, "final norm bias"),
             hidden.data_ptr<float>(), C, eps);
  return hidden;
}

at::Tensor decode_step(int64_t token, int64_t position, int64_t row, const at::Tensor& token_embedding,
                       const at::Tensor& position_embedding, at::TensorList layers, const at::Tensor& final_weight,
                       const at::Tensor& final_bias, const at::Tensor& keys, const at::Tensor& values,
                       int64_t n_head, double eps, bool tanh_gelu) {
  TORCH_CHECK(!layers.empty(), "decode_step: no layers");
  const auto step_of = layers[2].scalar_type() == at::kHalf ? &step<at::Half> : &step<float>;
  return step_of(token, position, row, token_embedding, position_embedding, layers, final_weight, final_bias, keys,
                 values, n_head, eps, tanh_gelu);
}

}  // namespace

TORCH_LIBRARY(tinystories_kernels, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.impl("linear", c10::DispatchKey::CPU, &linear);
  m.def("decode_step(int token, int position, int row, Tensor token_embedding, Tensor position_embedding, "
        "Tensor[] layers, Tensor final_weight, Tensor final_bias, Tensor(a!) keys, Tensor(b!) values, "
        "int n_head, float eps, bool tanh_gelu) -> Tensor");
  m.impl("decode_step", c10::DispatchKey::CPU, &decode_step);
}
