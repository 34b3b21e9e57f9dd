// oneDNN direct convolutions as XLA FFI handlers (CPU, float32), loaded by flax_impl/onednn_conv.py.
//
// Stride 1, no dilation, one group, zero padding `padding` on every side; NHWC activations, HWIO kernels:
//   OnednnConvForward          x (N,H,W,C), w (KH,KW,C,O)    -> y (N,Ho,Wo,O)
//   OnednnConvBackwardData     dy (N,Ho,Wo,O), w (KH,KW,C,O) -> dx (N,H,W,C)
//   OnednnConvBackwardWeights  x (N,H,W,C), dy (N,Ho,Wo,O)   -> dw (KH,KW,C,O)
// No bias: nn.Conv adds its own after the convolution, and autodiff differentiates that add.
//
// Activations are handed over in the caller's NHWC layout (no copies); kernels as format "any", so the
// primitive picks its preferred blocked layout, reordered from / to HWIO around the call (a few KB).
//
// Thread safety: a primitive is immutable once built, and oneDNN allows executing one from several
// threads at once given separate scratchpads; primitives are built once per shape into a map guarded
// by a mutex. Everything a call writes besides its result (the reordered kernel, the primitives'
// scratchpads: scratchpad_mode::user) lives in buffers of the calling thread, which runs one call at a
// time (XLA:CPU's FFI offers no scratch allocator: ScratchAllocator::Allocate finds none).
//
// Errors: every handler checks each buffer's dimensions against the geometry before oneDNN touches
// it, and turns every C++ exception into an FFI error (`guarded`).
//
// Written for both the oneDNN 2.x (Debian bookworm) and 3.x descriptor APIs.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <exception>
#include <new>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

using Buffer4 = ffi::Buffer<ffi::F32, 4>;
using Result4 = ffi::ResultBuffer<ffi::F32, 4>;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A stream only names the engine and the calling thread; one per thread.
dnnl::stream& thread_stream() {
  static thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

enum class Op { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, padding;
  int64_t ho() const { return h + 2 * padding - kh + 1; }
  int64_t wo() const { return w + 2 * padding - kw + 1; }
  auto key(Op op) const { return std::make_tuple(op, n, h, w, c, kh, kw, o, padding); }
};

struct Descs {
  memory::desc src, dst, kernel_any, kernel_hwio;
  memory::dims strides{1, 1}, padding;
  explicit Descs(const Geometry& g)
      : src({g.n, g.c, g.h, g.w}, memory::data_type::f32, Tag::nhwc),
        dst({g.n, g.o, g.ho(), g.wo()}, memory::data_type::f32, Tag::nhwc),
        kernel_any({g.o, g.c, g.kh, g.kw}, memory::data_type::f32, Tag::any),
        kernel_hwio({g.o, g.c, g.kh, g.kw}, memory::data_type::f32, Tag::hwio),
        padding{g.padding, g.padding} {}
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// One convolution primitive, and the kernel reorder between HWIO and the layout it wants (if other).
struct Plan {
  dnnl::primitive conv;
  memory::desc kernel;  // the primitive's (diff_)weights layout
  std::optional<dnnl::reorder> kernel_reorder;
  size_t scratchpad_bytes;
};

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, const dnnl::primitive_attr& attr) {
  const auto prop = dnnl::prop_kind::forward_training;
  const auto algorithm = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
  return {cpu_engine(), prop, algorithm, d.src, d.kernel_any, d.dst, d.strides, d.padding, d.padding, attr};
#else
  return {{prop, algorithm, d.src, d.kernel_any, d.dst, d.strides, d.padding, d.padding}, attr, cpu_engine()};
#endif
}

// `into_hwio`: the primitive writes the kernel (its gradient), to be reordered into HWIO afterwards.
template <typename Primitive>
Plan make_plan(const typename Primitive::primitive_desc& pd, const memory::desc& kernel, const Descs& d,
               bool into_hwio) {
  Plan plan{Primitive(pd), kernel, std::nullopt, pd.scratchpad_desc().get_size()};
  if (kernel != d.kernel_hwio) {
    const auto& from = into_hwio ? kernel : d.kernel_hwio;
    const auto& to = into_hwio ? d.kernel_hwio : kernel;
    dnnl::reorder::primitive_desc reorder_pd(cpu_engine(), from, cpu_engine(), to, user_scratchpad());
    plan.kernel_reorder = dnnl::reorder(reorder_pd);
    plan.scratchpad_bytes = std::max(plan.scratchpad_bytes, reorder_pd.scratchpad_desc().get_size());
  }
  return plan;
}

// The backward-data or backward-weights primitive descriptor (`Backward`), `forward` its hint.
template <typename Backward>
typename Backward::primitive_desc backward_pd(const Descs& d, const dnnl::primitive_attr& attr,
                                              const dnnl::convolution_forward::primitive_desc& forward) {
  const auto algorithm = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
  return {cpu_engine(), algorithm, d.src, d.kernel_any, d.dst, d.strides, d.padding, d.padding, forward, attr};
#else
  return {{algorithm, d.src, d.kernel_any, d.dst, d.strides, d.padding, d.padding}, attr, cpu_engine(), forward};
#endif
}

Plan build_plan(Op op, const Geometry& g) {
  const Descs d(g);
  const auto attr = user_scratchpad();
  const auto forward = forward_pd(d, attr);
  switch (op) {
    case Op::kForward:
      return make_plan<dnnl::convolution_forward>(forward, forward.weights_desc(), d, false);
    case Op::kBackwardData: {
      const auto pd = backward_pd<dnnl::convolution_backward_data>(d, attr, forward);
      return make_plan<dnnl::convolution_backward_data>(pd, pd.weights_desc(), d, false);
    }
    case Op::kBackwardWeights: {
      const auto pd = backward_pd<dnnl::convolution_backward_weights>(d, attr, forward);
      return make_plan<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc(), d, true);
    }
  }
  throw dnnl::error(dnnl_invalid_arguments, "unknown op");
}

// A growable 64-byte-aligned buffer; one of each per thread.
class ThreadBuffer {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      size_t rounded = (bytes + 63) / 64 * 64;
      data_.reset(std::aligned_alloc(64, rounded));
      size_ = data_ ? rounded : 0;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<void, decltype(&std::free)> data_{nullptr, &std::free};
  size_t size_ = 0;
};

const Plan& plan_for(Op op, const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.key(op)), std::unique_ptr<const Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.key(op)];
  if (!plan) plan = std::make_unique<const Plan>(build_plan(op, g));
  return *plan;
}

// Runs `op` on geometry `g`. `src`: x or dx, `dst`: y or dy (NHWC); `kernel`: w or dw (HWIO); each
// buffer's dimensions were checked against `g` by the handler.
ffi::Error run(Op op, const Geometry& g, float* src, float* dst, float* kernel) {
  const Plan& plan = plan_for(op, g);
  const Descs d(g);
  const auto& engine = cpu_engine();
  auto& stream = thread_stream();
  static thread_local ThreadBuffer scratchpad_buffer, kernel_buffer;
  void* scratchpad_data = plan.scratchpad_bytes ? scratchpad_buffer.get(plan.scratchpad_bytes) : nullptr;
  void* blocked_data = plan.kernel_reorder ? kernel_buffer.get(plan.kernel.get_size()) : nullptr;
  if ((plan.scratchpad_bytes && !scratchpad_data) || (plan.kernel_reorder && !blocked_data)) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "onednn_conv: out of memory for scratch buffers");
  }
  std::optional<memory> scratchpad;
  if (plan.scratchpad_bytes) {
    scratchpad = memory({{static_cast<int64_t>(plan.scratchpad_bytes)}, memory::data_type::u8, Tag::x}, engine,
                        scratchpad_data);
  }
  auto execute = [&](const dnnl::primitive& p, std::unordered_map<int, memory> args) {
    if (scratchpad) args.emplace(DNNL_ARG_SCRATCHPAD, *scratchpad);
    p.execute(stream, args);
  };
  memory src_m(d.src, engine, src), dst_m(d.dst, engine, dst), hwio(d.kernel_hwio, engine, kernel);
  memory blocked = plan.kernel_reorder ? memory(plan.kernel, engine, blocked_data) : hwio;
  auto reorder_kernel = [&](const memory& from, const memory& to) {
    if (plan.kernel_reorder) execute(*plan.kernel_reorder, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
  };
  switch (op) {
    case Op::kForward:
      reorder_kernel(hwio, blocked);
      execute(plan.conv, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, blocked}, {DNNL_ARG_DST, dst_m}});
      break;
    case Op::kBackwardData:
      reorder_kernel(hwio, blocked);
      execute(plan.conv, {{DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_WEIGHTS, blocked}, {DNNL_ARG_DIFF_SRC, src_m}});
      break;
    case Op::kBackwardWeights:
      execute(plan.conv, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_DIFF_WEIGHTS, blocked}});
      reorder_kernel(blocked, hwio);
      break;
  }
  stream.wait();
  return ffi::Error::Success();
}

// The geometry of NHWC activations `a` (N,H,W,C), HWIO kernel `k` (KH,KW,C,O) and NHWC outputs `out`
// (N,Ho,Wo,O), or an error unless all three agree (C, N, O, Ho, Wo) and every extent is positive.
// Checked before oneDNN reads or writes any of them: oneDNN trusts the descriptors built from it.
ffi::Unexpected<ffi::Error> invalid(const char* message) {
  return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(std::string("onednn_conv: ") + message));
}

ffi::ErrorOr<Geometry> geometry(ffi::Span<const int64_t> a, ffi::Span<const int64_t> k,
                                ffi::Span<const int64_t> out, int64_t padding) {
  const Geometry g{a[0], a[1], a[2], a[3], k[0], k[1], k[3], padding};
  if (padding < 0 || std::min({g.n, g.h, g.w, g.c, g.kh, g.kw, g.o}) <= 0 || g.ho() <= 0 || g.wo() <= 0) {
    return invalid("empty buffer, negative padding, or a kernel larger than the padded input");
  }
  if (k[2] != g.c) return invalid("input channels != kernel input channels");
  if (out[0] != g.n || out[1] != g.ho() || out[2] != g.wo() || out[3] != g.o) {
    return invalid("output / output-gradient dimensions do not match the input, kernel and padding");
  }
  return g;
}

// Every C++ exception (oneDNN's, std::bad_alloc from the plan cache, anything else) becomes an FFI
// error: none may unwind into XLA, which would terminate the process.
template <typename F>
ffi::Error guarded(F&& body) {
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_conv: oneDNN: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "onednn_conv: out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("onednn_conv: unknown C++ exception");
  }
}

ffi::Error Forward(Buffer4 x, Buffer4 w, Result4 y, int64_t padding) {
  return guarded([&]() -> ffi::Error {
    auto g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), padding);
    if (g.has_error()) return g.error();
    return run(Op::kForward, g.value(), x.typed_data(), y->typed_data(), w.typed_data());
  });
}

ffi::Error BackwardData(Buffer4 dy, Buffer4 w, Result4 dx, int64_t padding) {
  return guarded([&]() -> ffi::Error {
    auto g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), padding);
    if (g.has_error()) return g.error();
    return run(Op::kBackwardData, g.value(), dx->typed_data(), dy.typed_data(), w.typed_data());
  });
}

ffi::Error BackwardWeights(Buffer4 x, Buffer4 dy, Result4 dw, int64_t padding) {
  return guarded([&]() -> ffi::Error {
    auto g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), padding);
    if (g.has_error()) return g.error();
    return run(Op::kBackwardWeights, g.value(), x.typed_data(), dy.typed_data(), dw->typed_data());
  });
}

}  // namespace

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<Buffer4>().Arg<Buffer4>().Ret<Buffer4>()
                                  .Attr<int64_t>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Arg<Buffer4>().Arg<Buffer4>().Ret<Buffer4>()
                                  .Attr<int64_t>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind().Arg<Buffer4>().Arg<Buffer4>().Ret<Buffer4>()
                                  .Attr<int64_t>("padding"));

#pragma GCC visibility pop
