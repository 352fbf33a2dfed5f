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
// rrelu's noise, ctc_loss's log_alpha), whose bytes differ between identical calls.
// Samples are not copied one tensor at a time (on a GPU that was a kernel launch and an
// allocation per saved tensor, twice per training step): the tensors are held, as the
// segment holds them anyway, and gathered into one byte buffer per step of the forward
// and per recompute (sample_gather.h), which are compared once per recomputed segment.
// A tensor modified in place, or whose memory was freed or moved, between being saved and
// being gathered gives no sample; a forward tensor modified so is refused when autograd
// asks for it, as autograd refuses it under grad='direct', and a recomputed one whose
// memory is gone when autograd asks for it is refused too. Tensors without plain strided
// data (nested tensors, tensor subclasses, functorch wrappers) have neither their shape
// checked nor a sample taken.
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
#include <unordered_map>
#include <vector>

#include "bindings.h"
#include "sample_gather.h"

namespace anode_ext {
namespace {

namespace py = pybind11;
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// The sample: the elements of `t` at multi-indices j * step_d (step_d = (size_d - 1) / 2,
// j = 0, 1, 2): its first element, one near its middle and one near its end. They are
// evenly spaced in its storage whatever its layout, `sample_stride` elements apart.
int64_t sample_stride(const at::Tensor& t) {
  int64_t stride = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    stride += (t.size(d) - 1) / (kSampled - 1) * t.stride(d);
  }
  return stride;
}

// Whether `t` is a plain strided tensor whose shape and data this ledger may read.
bool plain(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                            c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::FuncTorchGradWrapper,
                                            c10::DispatchKey::Functionalize});
  return !t.is_nested() && !t.key_set().has_any(wrapped) && t.layout() == at::kStrided && !t.is_quantized() &&
         t.has_storage() && !t.is_meta();
}

// Whether a sample of `t` is taken: it requires grad and has plain, nonempty data.
bool sampled(const at::Tensor& t) {
  return t.requires_grad() && plain(t) && t.numel() > 0 && t.const_data_ptr() != nullptr;
}

// A saved tensor whose sample is still to be gathered into a buffer, at `offset`.
struct Pending {
  size_t index;       // its slot in the segment
  at::Tensor tensor;  // undefined: copy the forward's sample of the slot instead
  uint32_t version;   // when saved
  const void* data;   // its data when saved
  int64_t offset;
  int64_t element_size;
};

// Whether the storage of `t` still holds its elements up to storage offset `last`.
bool storage_holds(const at::Tensor& t, int64_t last) {
  return (last + 1) * static_cast<int64_t>(t.element_size()) <= static_cast<int64_t>(t.storage().nbytes());
}

// Whether the storage of `t` holds every element of `t` (not when it was resized, as
// sharded training frees a gathered parameter's memory).
bool storage_covers(const at::Tensor& t) {
  if (!plain(t) || t.numel() == 0) {
    return true;
  }
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    last += (t.size(d) - 1) * t.stride(d);
  }
  return t.const_data_ptr() != nullptr && storage_holds(t, last);
}

// Whether the sample of `t` can still be read as it was when saved: not modified in
// place since, its data where it was and its storage still holding the sampled elements
// (memory freed and allocated again holds no values of the tensor's).
bool readable(const at::Tensor& t, uint32_t version, const void* data) {
  if (!t.defined() || static_cast<uint32_t>(t._version()) != version || !plain(t) || t.numel() == 0 ||
      t.const_data_ptr() != data) {
    return false;
  }
  return storage_holds(t, t.storage_offset() + (kSampled - 1) * sample_stride(t));
}

// The sample of `t` into `region` (kSampled elements as bytes), by a copy of its own:
// tensors on another device than the buffer, or on a device gather_samples cannot read.
void copy_sample(const at::Tensor& t, const at::Tensor& region) {
  const at::Tensor elements = t.as_strided({kSampled}, {sample_stride(t)}, t.storage_offset());
  region.copy_(elements.clone(at::MemoryFormat::Contiguous).view(at::kByte));
}

// A zeroed buffer of `bytes` for samples on `device` (the places of unread samples stay
// zero also when the gather is turned off while the buffer is filled).
at::Tensor sample_buffer(int64_t bytes, const at::Device& device) {
  return at::zeros({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
}

// Writes the samples of `pending` into `buffer`, whose byte 0 is offset `base`. An entry
// without a readable tensor copies the same region of `fallback` (the forward's samples)
// or, without one, is left zero and its slot returned.
std::vector<size_t> gather_pending(const std::vector<Pending>& pending, const at::Tensor& buffer, int64_t base,
                                   const at::Tensor& fallback) {
  std::vector<size_t> unread;
  if (pending.empty()) {
    return unread;
  }
  const bool gathered = gathers_on(buffer.device());
  std::vector<SampleSource> sources;
  std::vector<const Pending*> copied;
  for (const Pending& p : pending) {
    SampleSource source{nullptr, 0, p.element_size, p.offset - base};
    if (readable(p.tensor, p.version, p.data)) {
      if (gathered && p.tensor.device() == buffer.device()) {
        source.address = p.tensor.const_data_ptr();
        source.stride_bytes = sample_stride(p.tensor) * p.element_size;
      } else {
        copied.push_back(&p);
      }
    } else if (fallback.defined()) {
      if (gathered) {
        source.address = static_cast<const char*>(fallback.const_data_ptr()) + p.offset;
        source.stride_bytes = p.element_size;
      } else {
        buffer.narrow(0, p.offset - base, kSampled * p.element_size)
            .copy_(fallback.narrow(0, p.offset, kSampled * p.element_size));
      }
    } else {
      unread.push_back(p.index);
    }
    sources.push_back(source);
  }
  if (gathered) {
    gather_samples(sources, buffer);
  }
  for (const Pending* p : copied) {
    copy_sample(p->tensor, buffer.narrow(0, p->offset - base, kSampled * p->element_size));
  }
  return unread;
}

struct Meta {
  std::optional<c10::SmallVector<int64_t, 5>> sizes;  // none when not plain
  at::ScalarType dtype;
  WeakImpl object;   // the saved tensor itself, and its version when saved: the same
  uint32_t version;  // object met again in the recompute must not have changed since
  std::optional<WeakImpl> outside;
  int64_t sample_at = -1;  // its sample's place in the segment's samples; -1: none taken
  bool sample_read = true;  // false: changed before the gather, its place holds zeros
  // Modified in place after the forward saved it: handing it to autograd is refused, as
  // autograd refuses it under grad='direct' (see set_forward_hooks).
  bool modified = false;
};

struct Segment {
  std::vector<Meta> meta;     // from the forward
  std::vector<bool> discarded;  // per saved tensor: saved by work whose result the solve dropped
  std::vector<at::Tensor> live;  // the forward's tensors, while the segment's forward runs
  bool running = false;
  // The forward's samples as bytes: gathered step by step into chunks while it runs,
  // joined when it ends.
  at::Tensor samples;
  std::vector<at::Tensor> sample_chunks;
  int64_t sample_bytes = 0;    // taken so far
  int64_t chunked_bytes = 0;   // of which gathered into chunks
  std::optional<at::Device> sample_device;  // of the first tensor sampled
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

  // Whether the caller's saved-tensor hooks were in effect around the forward. Under
  // grad='direct' they would have packed what func saves (a copy, with
  // torch.autograd.graph.allow_mutation_on_saved_tensors), so that a later in-place change
  // need not reach the backward: a saved tensor changed in the forward is then not refused.
  void set_forward_hooks(bool active) {
    forward_hooks_ = active;
  }

  // --- the forward ---------------------------------------------------------------

  void start_segment(int64_t segment) {
    gather_forward_samples();
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
    if (s.samples.defined() && !s.sample_chunks.empty()) {  // a segment started again
      s.sample_chunks.insert(s.sample_chunks.begin(), s.samples);
    }
    if (s.sample_chunks.size() == 1) {
      s.samples = s.sample_chunks.front();
    } else if (!s.sample_chunks.empty()) {
      s.samples = at::cat(s.sample_chunks);
    }
    s.sample_chunks.clear();
  }

  // Drops the tensors the running segment's forward saved so far, once their samples are
  // gathered: called after each step, since func can only differentiate through what it
  // saved within a step.
  void release_live() {
    gather_forward_samples();
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
    const uint32_t version = static_cast<uint32_t>(t._version());
    Meta m{std::move(sizes), t.scalar_type(), WeakImpl(t.getIntrusivePtr()), version, std::nullopt};
    const at::Tensor outside = outside_of(t);
    if (outside.defined()) {
      m.outside = WeakImpl(outside.getIntrusivePtr());
      note_version(outside);
    }
    if (sampled(t)) {
      if (!s.sample_device.has_value()) {
        s.sample_device = t.device();
      }
      m.sample_at = s.sample_bytes;
      const int64_t size = static_cast<int64_t>(t.element_size());
      s.sample_bytes += kSampled * size;
      forward_pending_.push_back(Pending{s.meta.size(), t, version, t.const_data_ptr(), m.sample_at, size});
      forward_pending_segment_ = current_;
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
    const bool in_forward = static_cast<size_t>(current_) < segments_.size() && segments_[current_].running;
    const size_t first_live = s.meta.size() - s.live.size();
    if ((s.running && index < first_live) || (in_forward && !s.running)) {
      throw std::runtime_error("grad='" + mode_ +
                               "': func differentiated, while the forward ran, through a tensor saved in an "
                               "earlier step (a graph it kept from an earlier call); the solve holds what func "
                               "saves only until the end of the step that saved it. Use grad='direct' for such a "
                               "func");
    }
    if (s.running) {
      // func differentiates inside itself while the forward runs: the tensor is there
      // (saved in this step; the live tensors are numbered from the segment's start).
      return s.live.at(index - first_live);
    }
    if (s.meta.at(index).modified && !forward_hooks_) {
      throw std::runtime_error(in_place_message());
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
      throw std::runtime_error(in_place_message());
    }
    if (!storage_covers(t)) {
      throw std::runtime_error("grad='" + mode_ +
                               "': a tensor that func saved for backward has lost its memory since the recompute "
                               "saved it (its storage was resized, as when sharded training frees a gathered "
                               "parameter), so autograd cannot read it; keep a saved tensor's storage until "
                               "backward");
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
    recorded_pending_.clear();
    recorded_samples_ = s.samples.defined() ? sample_buffer(s.samples.numel(), s.samples.device()) : at::Tensor();
    sample_covered_.assign(slots, false);
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
    gather_recorded_samples(s);
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
      compare_samples(s);
    }
    recorded_pending_.clear();
    recorded_samples_ = at::Tensor();
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

  std::string in_place_message() const {
    return "grad='" + mode_ +
           "': a tensor that func saved for backward was modified by an in-place operation after func used it, so "
           "autograd would see other values; compute it out of place, as grad='direct' would require";
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
    if (exact_ && m.sample_at >= 0 && recorded_samples_.defined()) {
      note_sample(s, index, t);
    }
  }

  // Queues the sample of recomputed tensor `index` for the recording's buffer (at once
  // with the caller's hooks, which may move the tensor elsewhere after this).
  void note_sample(const Segment& s, size_t index, const at::Tensor& t) {
    const Meta& m = s.meta[index];
    if (!in_samples(s, m)) {
      return;
    }
    sample_covered_[index] = true;
    if (m.sample_read && !t.requires_grad()) {
      mismatch_ = "saved tensor " + std::to_string(index) +
                  " required grad in the forward but not in the recompute (a parameter frozen, or swapped for "
                  "a tensor that does not require grad)";
      return;
    }
    const at::Tensor sampled_now = m.sample_read && sampled(t) ? t : at::Tensor();
    Pending p{index, sampled_now, static_cast<uint32_t>(t._version()), t.const_data_ptr(), m.sample_at,
              static_cast<int64_t>(c10::elementSize(m.dtype))};
    if (s.caller_hooks) {
      gather_pending({p}, recorded_samples_, 0, s.samples);
    } else {
      recorded_pending_.push_back(std::move(p));
    }
  }

  // Whether the forward's sample of `m` is in its segment's samples (not when the
  // segment's forward has not ended).
  static bool in_samples(const Segment& s, const Meta& m) {
    return s.samples.defined() &&
           m.sample_at + kSampled * static_cast<int64_t>(c10::elementSize(m.dtype)) <= s.samples.numel();
  }

  // Gathers the forward's samples not gathered yet into a chunk of their segment.
  void gather_forward_samples() {
    if (forward_pending_.empty()) {
      return;
    }
    Segment& s = segments_.at(forward_pending_segment_);
    for (const Pending& p : forward_pending_) {
      s.meta[p.index].modified = static_cast<uint32_t>(p.tensor._version()) != p.version;
    }
    at::Tensor chunk = sample_buffer(s.sample_bytes - s.chunked_bytes, *s.sample_device);
    for (size_t index : gather_pending(forward_pending_, chunk, s.chunked_bytes, at::Tensor())) {
      s.meta[index].sample_read = false;  // the recompute copies the zeros: nothing is compared
    }
    forward_pending_.clear();
    s.sample_chunks.push_back(std::move(chunk));
    s.chunked_bytes = s.sample_bytes;
  }

  void gather_recorded_samples(const Segment& s) {
    if (recorded_samples_.defined()) {
      gather_pending(recorded_pending_, recorded_samples_, 0, s.samples);
    }
    recorded_pending_.clear();
  }

  static std::string values_differ(size_t index) {
    return "saved tensor " + std::to_string(index) +
           " holds other values than in the forward, though of the same shape and dtype";
  }

  // The recording's samples against the forward's, all at once (on a GPU, one
  // synchronization per recomputed segment); on a difference, the first slot that differs.
  // A slot the recording did not reach takes the forward's sample (the count of saved
  // tensors is checked after this).
  void compare_samples(const Segment& s) {
    if (!recorded_samples_.defined()) {
      return;
    }
    for (size_t index = 0; index < s.meta.size(); ++index) {
      const Meta& m = s.meta[index];
      if (m.sample_at >= 0 && !sample_covered_[index] && in_samples(s, m)) {
        recorded_pending_.push_back(Pending{index, at::Tensor(), 0, nullptr, m.sample_at,
                                            static_cast<int64_t>(c10::elementSize(m.dtype))});
      }
    }
    gather_recorded_samples(s);
    if (at::equal(recorded_samples_, s.samples)) {
      return;
    }
    const at::Tensor then = s.samples.cpu(), now = recorded_samples_.cpu();
    const auto* a = then.const_data_ptr<uint8_t>();
    const auto* b = now.const_data_ptr<uint8_t>();
    for (size_t index = 0; index < s.meta.size(); ++index) {
      const Meta& m = s.meta[index];
      const size_t bytes = kSampled * c10::elementSize(m.dtype);
      if (m.sample_at >= 0 && in_samples(s, m) && std::memcmp(a + m.sample_at, b + m.sample_at, bytes) != 0) {
        mismatch_ = values_differ(index);
        return;
      }
    }
  }

  py::object recompute_;
  std::string mode_;
  std::vector<Segment> segments_;
  int64_t current_ = 0;
  int64_t recording_ = 0;
  size_t saved_ = 0;  // tensors the recording has saved so far
  bool exact_ = true;
  bool forward_hooks_ = false;
  py::object keep_ = py::none();
  py::object restore_ = py::none();
  std::unordered_map<c10::TensorImpl*, at::Tensor> copies_;
  std::string mismatch_;
  // Samples still to be gathered: the forward's (of segment forward_pending_segment_),
  // and the recording's, into recorded_samples_, laid out as its segment's samples, with
  // which slots the recording has reached.
  std::vector<Pending> forward_pending_;
  int64_t forward_pending_segment_ = 0;
  std::vector<Pending> recorded_pending_;
  at::Tensor recorded_samples_;
  std::vector<bool> sample_covered_;
  std::unordered_map<c10::TensorImpl*, std::pair<WeakImpl, uint32_t>> outside_versions_;
  std::unordered_map<c10::TensorImpl*, WeakImpl> known_;
};

}  // namespace

void bind_saved_ledger(py::module_& m) {
  py::class_<SavedLedger>(m, "SavedLedger",
                          "Saved-tensor bookkeeping of one anode/revolve solve (anode_ext/modes/checkpointed.py).")
      .def(py::init<py::object, std::string>(), py::arg("recompute"), py::arg("mode"))
      .def("set_known", &SavedLedger::set_known)
      .def("set_forward_hooks", &SavedLedger::set_forward_hooks)
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
  m.def("set_sample_gather", &set_sample_gather, py::arg("enabled"),
        "Gather the saved-tensor samples of anode/revolve in one pass per step (True, the default) or copy "
        "each on its own (False, for benchmarks); returns the previous setting.");
}

}  // namespace anode_ext
