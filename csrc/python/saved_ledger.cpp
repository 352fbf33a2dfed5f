// The per-saved-tensor bookkeeping of grad='anode' and grad='revolve'
// (anode_ext/modes/checkpointed.py has the design). Its methods are the saved-tensor
// hooks themselves: with a cheap func, a hook body written in Python (and the Python
// objects it keeps) cost more than the operation that saved the tensor.
//
// For each segment of a solve (the whole solve for anode, one step for revolve) the
// ledger holds, from the forward, each saved tensor's shape, dtype, the leaf requiring
// grad it is or views, and a sample of its values; the tensors themselves only while the
// segment's forward runs. A recompute records the segment's tensors again, which are
// compared with the forward's and handed to autograd one by one.
//
// The sample (a few elements, bit for bit) catches a func whose recompute computes other
// intermediate values than its forward while every state comes out the same (a sign
// that changed under an abs, say): the state fingerprints alone would let that through,
// and the gradient would silently differ. Only saved tensors that require grad are
// sampled: the others include workspaces that ops save partly unwritten (oneDNN's LSTM,
// rrelu's noise, ctc_loss's log_alpha), whose bytes differ between identical calls. On
// the CPU the elements are read in place; on other devices they are copied by one small
// asynchronous kernel and compared once per recomputed segment. Tensors without plain
// strided data (nested tensors, tensor subclasses, functorch wrappers) have neither their
// shape checked nor a sample taken.
//
// An adaptive solve records its rejected step attempts too (they run in the forward and
// in the recompute alike, so the tensors keep their places); what they saved is marked
// discarded: the recompute compares those tensors and lets them go, and hands none of them
// to autograd.
//
// grad='reversible' records segments from states reconstructed to rounding rather than
// repeated bit for bit: such a recompute is inexact, and its samples are not compared (its
// caller compares the reconstructed states to a tolerance instead).

#include <c10/util/SmallVector.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "bindings.h"

namespace anode_ext {
namespace {

namespace py = pybind11;
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// The sample: the elements of `t` at multi-indices j * step_d (step_d = (size_d - 1) / 2,
// j = 0, 1, 2): its first element, one near its middle and one near its end. They are
// evenly spaced in its storage whatever its layout, `sample_stride` elements apart.
constexpr int64_t kSampled = 3;

int64_t sample_stride(const at::Tensor& t) {
  int64_t stride = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    stride += (t.size(d) - 1) / (kSampled - 1) * t.stride(d);
  }
  return stride;
}

// The sample's bytes, read in place (CPU tensors).
std::string sample_bytes(const at::Tensor& t) {
  const int64_t stride = sample_stride(t);
  const int64_t size = static_cast<int64_t>(t.element_size());
  const char* first = static_cast<const char*>(t.const_data_ptr());
  std::string bytes(kSampled * size, '\0');
  for (int64_t j = 0; j < kSampled; ++j) {
    std::memcpy(&bytes[j * size], first + j * stride * size, size);
  }
  return bytes;
}

struct Sample {
  std::string bytes;  // CPU tensors
  at::Tensor copy;    // tensors on other devices (a copy of the sample as bytes)
};

// Whether `t` is a plain strided tensor whose shape and data this ledger may read.
bool plain(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                            c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::FuncTorchGradWrapper,
                                            c10::DispatchKey::Functionalize});
  return !t.is_nested() && !t.key_set().has_any(wrapped) && t.layout() == at::kStrided && !t.is_quantized() &&
         t.has_storage() && !t.is_meta();
}

// Empty for a tensor that does not require grad, is empty or has no plain data.
Sample sample_of(const at::Tensor& t) {
  Sample s;
  if (!t.requires_grad() || !plain(t) || t.numel() == 0 || t.const_data_ptr() == nullptr) {
    return s;
  }
  if (t.is_cpu()) {
    s.bytes = sample_bytes(t);
  } else {
    const at::Tensor view = t.as_strided({kSampled}, {sample_stride(t)}, t.storage_offset());
    s.copy = view.clone(at::MemoryFormat::Contiguous).view(at::kByte);
  }
  return s;
}

struct Meta {
  std::optional<c10::SmallVector<int64_t, 5>> sizes;  // none when not plain
  at::ScalarType dtype;
  WeakImpl object;   // the saved tensor itself, and its version when saved: the same
  uint32_t version;  // object met again in the recompute must not have changed since
  std::optional<WeakImpl> outside;
  Sample sample;
};

struct Segment {
  std::vector<Meta> meta;     // from the forward
  std::vector<bool> discarded;  // per saved tensor: saved by work whose result the solve dropped
  std::vector<at::Tensor> live;  // the forward's tensors, while the segment's forward runs
  bool running = false;
  // The latest recompute, one slot per saved tensor: the tensors (or, with the caller's
  // hooks, what they made of them), their versions when saved, and how many tensors
  // autograd has not taken yet.
  std::vector<at::Tensor> tensors;
  std::vector<py::object> packed;
  std::vector<uint32_t> versions;
  std::vector<bool> taken;
  bool caller_hooks = false;
  size_t left = 0;
  bool recorded = false;
};

class SavedLedger {
 public:
  SavedLedger(py::object recompute, std::string mode) : recompute_(std::move(recompute)), mode_(std::move(mode)) {}

  // The tensors a recompute must meet again as the very same objects: those the user's
  // func reaches (its modules' parameters, tensors it closes over) and the input state.
  void set_known(const std::vector<at::Tensor>& tensors) {
    for (const at::Tensor& t : tensors) {
      known_.insert_or_assign(t.unsafeGetTensorImpl(), WeakImpl(t.getIntrusivePtr()));
    }
  }

  // --- the forward ---------------------------------------------------------------

  void start_segment(int64_t segment) {
    if (static_cast<size_t>(segment) >= segments_.size()) {
      segments_.resize(segment + 1);
    }
    current_ = segment;
    segments_[segment].running = true;
  }

  void end_segment(int64_t segment) {
    Segment& s = segments_.at(segment);
    s.running = false;
    release_live();
  }

  // Drops the tensors the running segment's forward saved so far: called after each
  // step, since func can only differentiate through what it saved within a step.
  void release_live() {
    std::vector<at::Tensor>().swap(segments_.at(current_).live);
  }

  // How many tensors the running segment's forward has saved so far.
  int64_t saved_count() const {
    return static_cast<int64_t>(segments_.at(current_).meta.size());
  }

  // Marks tensors [start, stop) of the running segment as saved by work whose result the
  // solve dropped (a rejected step attempt): a recompute records them again, in their
  // places, but does not hold them, and handing one to autograd is refused.
  void discard(int64_t start, int64_t stop) {
    Segment& s = segments_.at(current_);
    if (start < 0 || stop < start || static_cast<size_t>(stop) > s.meta.size()) {
      throw std::out_of_range("SavedLedger.discard: range outside the saved tensors");
    }
    s.discarded.resize(s.meta.size(), false);
    std::fill(s.discarded.begin() + start, s.discarded.begin() + stop, true);
  }

  int64_t pack(const at::Tensor& t) {
    Segment& s = segments_[current_];
    std::optional<c10::SmallVector<int64_t, 5>> sizes;
    if (plain(t)) {
      sizes.emplace(t.sizes().begin(), t.sizes().end());
    }
    Meta m{std::move(sizes), t.scalar_type(), WeakImpl(t.getIntrusivePtr()), static_cast<uint32_t>(t._version()),
           std::nullopt, sample_of(t)};
    const at::Tensor outside = outside_of(t);
    if (outside.defined()) {
      m.outside = WeakImpl(outside.getIntrusivePtr());
      note_version(outside);
    }
    s.meta.push_back(std::move(m));
    s.live.push_back(t);
    return encode(current_, s.meta.size() - 1);
  }

  // --- the backward --------------------------------------------------------------

  at::Tensor unpack(int64_t key) {
    const int64_t segment = key >> kIndexBits;
    const size_t index = static_cast<size_t>(key & kIndexMask);
    Segment& s = segments_.at(segment);
    if (is_discarded(s, index)) {
      throw std::runtime_error("grad='" + mode_ +
                               "': backward reached a tensor saved by a rejected step attempt or the "
                               "initial-step probe of an adaptive solve (func kept a result of it for later "
                               "use), which the recompute does not hold; use grad='direct' for such a func "
                               "(or first_step=..., which skips the probe)");
    }
    if (s.running) {
      // func differentiates inside itself while the forward runs: the tensor is there
      // (saved in this step; the live tensors are numbered from the segment's start).
      return s.live.at(index - (s.meta.size() - s.live.size()));
    }
    if (torch::autograd::GradMode::is_enabled()) {
      throw std::runtime_error("grad='" + mode_ +
                               "' computes its gradient by recomputation inside backward and cannot be "
                               "differentiated again (double backward / create_graph=True); use grad='direct' "
                               "for higher-order derivatives");
    }
    if (!s.recorded || s.taken.at(index)) {
      recompute_(segment);
    }
    Segment& r = segments_.at(segment);  // the callback may have grown the vector
    r.taken[index] = true;
    const bool held_here = !r.caller_hooks;  // else the caller's hooks made what comes back
    at::Tensor t = held_here ? std::move(r.tensors[index]) : THPVariable_Unpack(restore_(r.packed[index]).ptr());
    const uint32_t version = r.versions[index];
    if (!held_here) {
      r.packed[index] = py::object();
    }
    if (--r.left == 0) {
      release(r);
    }
    if (held_here && t._version() != version) {
      throw std::runtime_error("grad='" + mode_ +
                               "': a tensor that func saved for backward was modified by an in-place operation "
                               "after func used it, so autograd would see other values; compute it out of place, "
                               "as grad='direct' would require");
    }
    return t;
  }

  // Starts recording segment `segment` again. `copies` pairs each tensor the recompute
  // starts from with the forward's tensor it stands for (or None): a copy of an input
  // counts as that input. `pack` and `unpack` are the caller's saved-tensor hooks, or None.
  // `exact`: whether the recompute starts from the forward's own states (else from states
  // reconstructed to rounding, whose saved values are not compared).
  void begin_record(int64_t segment, const std::vector<std::pair<at::Tensor, py::object>>& copies,
                    py::object pack, py::object unpack, bool exact) {
    Segment& s = segments_.at(segment);
    release(s);
    const size_t slots = s.meta.size();
    s.tensors.assign(slots, at::Tensor());
    s.caller_hooks = !pack.is_none();
    if (s.caller_hooks) {
      s.packed.assign(slots, py::object());
    }
    s.versions.assign(slots, 0);
    saved_ = 0;
    exact_ = exact;
    recording_ = segment;
    keep_ = std::move(pack);
    restore_ = std::move(unpack);
    copies_.clear();
    add_copies(copies);
    mismatch_.clear();
    device_samples_.clear();
  }

  // More pairs as begin_record takes them: tensors the recording starts from midway
  // (a reconstructed state).
  void add_copies(const std::vector<std::pair<at::Tensor, py::object>>& copies) {
    for (const auto& [copy, original] : copies) {
      copies_[copy.unsafeGetTensorImpl()] =
          original.is_none() ? at::Tensor() : THPVariable_Unpack(original.ptr());
    }
  }

  int64_t keep(const at::Tensor& t) {
    Segment& s = segments_.at(recording_);
    const size_t index = saved_++;
    if (index >= s.tensors.size()) {  // more than the forward saved: reported by finish_record
      s.tensors.resize(index + 1);
      s.versions.resize(index + 1);
      if (s.caller_hooks) {
        s.packed.resize(index + 1);
      }
    }
    compare(s, index, t);
    if (!s.caller_hooks) {
      // Detached (autograd rebuilds the variable it unpacks anyway): the recomputed
      // tensor's own graph holds these hooks, hence this ledger, hence the solve; a
      // reference back would be a cycle through C++ that no collector frees when a
      // backward leaves some tensors untaken.
      s.tensors[index] = t.detach();
    } else {
      s.packed[index] = keep_(py::reinterpret_steal<py::object>(THPVariable_Wrap(t)));
    }
    s.versions[index] = t._version();
    return static_cast<int64_t>(index);
  }

  // Lets go of the discarded tensors the recording has saved so far (held until now in case
  // func differentiated inside the work that saved them).
  void drop_discarded() {
    Segment& s = segments_.at(recording_);
    const size_t stop = std::min({saved_, s.discarded.size(), s.tensors.size()});
    for (size_t i = 0; i < stop; ++i) {
      if (s.discarded[i]) {
        s.tensors[i] = at::Tensor();
        if (s.caller_hooks) {
          s.packed[i] = py::object();
        }
      }
    }
  }

  // A tensor of the recompute asked for inside it (func differentiating inside itself).
  at::Tensor kept(int64_t index) {
    Segment& s = segments_.at(recording_);
    return s.caller_hooks ? THPVariable_Unpack(restore_(s.packed.at(index)).ptr()) : s.tensors.at(index);
  }

  // Ends the recording; "" when it repeated the forward, else what differed.
  std::string finish_record() {
    Segment& s = segments_.at(recording_);
    copies_.clear();
    if (mismatch_.empty()) {
      compare_device_samples();
    }
    if (mismatch_.empty() && saved_ != s.meta.size()) {
      mismatch_ = "func saved " + std::to_string(saved_) + " tensors for backward, against " +
                  std::to_string(s.meta.size()) + " in the forward";
    }
    if (!mismatch_.empty()) {
      release(s);
      return mismatch_;
    }
    drop_discarded();
    s.taken.assign(s.meta.size(), false);
    s.left = s.meta.size() - static_cast<size_t>(std::count(s.discarded.begin(), s.discarded.end(), true));
    s.recorded = true;
    if (s.left == 0) {
      release(s);
    }
    return "";
  }

  // True when no tensor from outside that func saved was modified in place since.
  bool outside_unchanged() const {
    for (const auto& [impl, entry] : outside_versions_) {
      const auto alive = entry.first.lock();
      if (alive && alive.get() == impl && alive->version_counter().current_version() != entry.second) {
        return false;
      }
    }
    return true;
  }

 private:
  static constexpr int kIndexBits = 40;
  static constexpr int64_t kIndexMask = (int64_t(1) << kIndexBits) - 1;

  // The known tensor that `t` is or views, when it requires grad, or an undefined tensor.
  at::Tensor outside_of(const at::Tensor& t) const {
    if (!t.requires_grad()) {
      return at::Tensor();
    }
    const at::Tensor base = t.is_view() ? at::Tensor(t._base()) : t;
    auto found = known_.find(base.unsafeGetTensorImpl());
    if (found == known_.end()) {
      return at::Tensor();
    }
    const auto alive = found->second.lock();
    return alive && alive.get() == base.unsafeGetTensorImpl() ? base : at::Tensor();
  }

  static bool is_discarded(const Segment& s, size_t index) {
    return index < s.discarded.size() && s.discarded[index];
  }

  static int64_t encode(int64_t segment, size_t index) {
    return (segment << kIndexBits) | static_cast<int64_t>(index);
  }

  static void release(Segment& s) {
    s.tensors.clear();
    s.packed.clear();
    s.versions.clear();
    s.taken.clear();
    s.left = 0;
    s.recorded = false;
  }

  void note_version(const at::Tensor& t) {
    c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    auto found = outside_versions_.find(impl);
    if (found != outside_versions_.end()) {
      const auto alive = found->second.first.lock();
      if (alive && alive.get() == impl) {
        return;
      }
    }
    outside_versions_.insert_or_assign(impl, std::make_pair(WeakImpl(t.getIntrusivePtr()),
                                                            static_cast<uint32_t>(t._version())));
  }

  // Notes the first way in which tensor `index` of the recompute differs from the forward's.
  void compare(const Segment& s, size_t index, const at::Tensor& t) {
    if (!mismatch_.empty() || index >= s.meta.size()) {
      return;
    }
    const Meta& m = s.meta[index];
    const auto forward_object = m.object.lock();
    if (forward_object && forward_object.get() == t.unsafeGetTensorImpl() && t._version() != m.version) {
      mismatch_ = "saved tensor " + std::to_string(index) +
                  " comes from outside the solve and was modified in place since the forward saved it";
      return;
    }
    const bool plain_now = plain(t);
    if (plain_now != m.sizes.has_value() || t.scalar_type() != m.dtype ||
        (plain_now && !t.sizes().equals(*m.sizes))) {
      std::ostringstream out;
      out << "saved tensor " << index << " has ";
      if (plain_now) {
        out << "shape " << t.sizes() << " and ";
      }
      out << "dtype " << t.scalar_type() << ", against ";
      if (m.sizes.has_value()) {
        out << at::IntArrayRef(*m.sizes) << " and ";
      }
      out << m.dtype << " in the forward";
      mismatch_ = out.str();
      return;
    }
    // A copy of the input state stands for the input the forward started from.
    at::Tensor outside;
    if (t.requires_grad()) {
      const at::Tensor base = t.is_view() ? at::Tensor(t._base()) : t;
      auto copy = copies_.find(base.unsafeGetTensorImpl());
      outside = copy != copies_.end() ? copy->second : outside_of(t);
    }
    // A tensor from outside must be the one the forward used; one the forward made
    // inside func (a fresh leaf) and that has died since cannot be compared.
    bool same = outside.defined() == m.outside.has_value();
    if (same && m.outside.has_value()) {
      const auto then = m.outside->lock();
      same = !then || then.get() == outside.unsafeGetTensorImpl();
    }
    if (!same) {
      mismatch_ = "saved tensor " + std::to_string(index) +
                  " is another tensor from outside the solve than in the forward (a requires_grad flag or a "
                  "parameter changed)";
      return;
    }
    if (!exact_) {
      return;
    }
    const Sample now = sample_of(t);
    if (!now.copy.defined()) {
      if (now.bytes != m.sample.bytes) {
        mismatch_ = values_differ(index);
      }
    } else if (m.sample.copy.defined()) {
      device_samples_.emplace_back(index, m.sample.copy, now.copy);
    }
  }

  static std::string values_differ(size_t index) {
    return "saved tensor " + std::to_string(index) +
           " holds other values than in the forward, though of the same shape and dtype";
  }

  // The samples of tensors on other devices than the CPU, compared at once: one
  // synchronization per recomputed segment rather than one per tensor.
  void compare_device_samples() {
    if (device_samples_.empty()) {
      return;
    }
    std::vector<at::Tensor> then, now;
    for (const auto& [index, a, b] : device_samples_) {
      then.push_back(a);
      now.push_back(b);
    }
    if (!at::cat(then).equal(at::cat(now).to(then.front().device()))) {
      for (const auto& [index, a, b] : device_samples_) {
        if (!a.equal(b.to(a.device()))) {
          mismatch_ = values_differ(index);
          break;
        }
      }
    }
    device_samples_.clear();
  }

  py::object recompute_;
  std::string mode_;
  std::vector<Segment> segments_;
  int64_t current_ = 0;
  int64_t recording_ = 0;
  size_t saved_ = 0;  // tensors the recording has saved so far
  bool exact_ = true;
  py::object keep_ = py::none();
  py::object restore_ = py::none();
  std::unordered_map<c10::TensorImpl*, at::Tensor> copies_;
  std::string mismatch_;
  std::vector<std::tuple<size_t, at::Tensor, at::Tensor>> device_samples_;
  std::unordered_map<c10::TensorImpl*, std::pair<WeakImpl, uint32_t>> outside_versions_;
  std::unordered_map<c10::TensorImpl*, WeakImpl> known_;
};

}  // namespace

void bind_saved_ledger(py::module_& m) {
  py::class_<SavedLedger>(m, "SavedLedger",
                          "Saved-tensor bookkeeping of one anode/revolve solve (anode_ext/modes/checkpointed.py).")
      .def(py::init<py::object, std::string>(), py::arg("recompute"), py::arg("mode"))
      .def("set_known", &SavedLedger::set_known)
      .def("start_segment", &SavedLedger::start_segment)
      .def("end_segment", &SavedLedger::end_segment)
      .def("release_live", &SavedLedger::release_live)
      .def("saved_count", &SavedLedger::saved_count)
      .def("discard", &SavedLedger::discard)
      .def("drop_discarded", &SavedLedger::drop_discarded)
      .def("pack", &SavedLedger::pack)
      .def("unpack", &SavedLedger::unpack)
      .def("begin_record", &SavedLedger::begin_record)
      .def("add_copies", &SavedLedger::add_copies)
      .def("keep", &SavedLedger::keep)
      .def("kept", &SavedLedger::kept)
      .def("finish_record", &SavedLedger::finish_record)
      .def("outside_unchanged", &SavedLedger::outside_unchanged);
}

}  // namespace anode_ext
