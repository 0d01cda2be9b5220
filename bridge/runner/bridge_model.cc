// bridge_model.cc - the C API of bridge_model.h on TVM 0.27's runtime (Relax VM libraries).
//
// Uses only the tvm_ffi headers; link with -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -ldl
// (libtvm_runtime registers the loader for Relax VM executables). Compile with -DBRIDGE_CUDA
// for CUDA bundles: their models run on GPU 0 by default, with libtvm_runtime_cuda.so loaded
// from this library's folder.

#include "bridge_model.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

#ifdef BRIDGE_CUDA
constexpr int kDefaultDevice = kDLCUDA;
#else
constexpr int kDefaultDevice = kDLCPU;
#endif
constexpr size_t kAlignment = 64;  // TVM's kernels assume 64-byte aligned buffers

thread_local std::string last_error;

[[noreturn]] void Fail(const std::string& msg) { throw std::runtime_error(msg); }

// Runs f; turns any exception into last_error and -1.
template <typename F>
int Guard(F f) {
  try {
    f();
    return 0;
  } catch (const ffi::Error& e) {
    last_error = std::string(e.kind()) + ": " + std::string(e.message());
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown error";
  }
  return -1;
}

ffi::Function Global(const char* name) {
  ffi::Optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) Fail(std::string("the TVM runtime lacks ") + name);
  return *f;
}

// ---- dtypes and shapes ----

struct DtypeName {
  const char* name;
  DLDataType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"float32", {kDLFloat, 32, 1}}, {"float16", {kDLFloat, 16, 1}},
    {"float64", {kDLFloat, 64, 1}}, {"bfloat16", {kDLBfloat, 16, 1}},
    {"int8", {kDLInt, 8, 1}},       {"int16", {kDLInt, 16, 1}},
    {"int32", {kDLInt, 32, 1}},     {"int64", {kDLInt, 64, 1}},
    {"uint8", {kDLUInt, 8, 1}},     {"uint16", {kDLUInt, 16, 1}},
    {"bool", {kDLBool, 8, 1}},
};

bool SameDtype(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

std::string NameOf(DLDataType t) {
  for (const DtypeName& d : kDtypes) {
    if (SameDtype(d.dtype, t)) return d.name;
  }
  return "dtype(" + std::to_string(t.code) + "," + std::to_string(t.bits) + "," +
         std::to_string(t.lanes) + ")";
}

std::string ShapeText(const int64_t* shape, int ndim) {
  std::string text = "(";
  for (int i = 0; i < ndim; ++i) {
    text += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  }
  return text + (ndim == 1 ? ",)" : ")");
}

// ---- the model's inputs and outputs, from model.signature ----

struct Spec {
  std::string name, dtype_name;
  DLDataType dtype{kDLFloat, 32, 1};
  std::vector<int64_t> shape;  // -1: any size
};

// One "input|output NAME DTYPE DIMS" line per tensor, DIMS like 1x28x28x1 (? for any size,
// "scalar" for none); other lines are ignored.
void ParseSignature(const std::string& text, std::vector<Spec>* inputs,
                    std::vector<Spec>* outputs) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string kind, dims;
    Spec spec;
    if (!(fields >> kind >> spec.name >> spec.dtype_name >> dims)) continue;
    if (kind != "input" && kind != "output") continue;
    bool known = false;
    for (const DtypeName& d : kDtypes) {
      if (spec.dtype_name == d.name) spec.dtype = d.dtype, known = true;
    }
    if (!known) Fail("signature: unknown dtype '" + spec.dtype_name + "' of " + spec.name);
    std::stringstream ss(dims == "scalar" ? "" : dims);
    for (std::string dim; std::getline(ss, dim, 'x');) {
      if (!dim.empty()) spec.shape.push_back(dim == "?" ? -1 : std::stoll(dim));
    }
    (kind == "input" ? inputs : outputs)->push_back(spec);
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (in) text << in.rdbuf();
  return text.str();
}

// ---- the same, from the .meta.json sidecar of a library exported without a bundle ----

// A JSON value: just enough of JSON to read the sidecar's "inputs" and "outputs".
struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  double number = 0;
  std::string text;
  std::vector<Json> items;                          // array items, or object values
  std::vector<std::string> keys;                    // object keys
  const Json* Get(const std::string& key) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& text) : s_(text) {}
  Json Document() {
    Json value = Value();
    Space();
    if (pos_ != s_.size()) Bad("trailing text");
    return value;
  }

 private:
  [[noreturn]] void Bad(const std::string& what) {
    Fail("malformed metadata json (" + what + " at byte " + std::to_string(pos_) + ")");
  }
  void Space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Eat(char c) {
    Space();
    if (pos_ < s_.size() && s_[pos_] == c) return ++pos_, true;
    return false;
  }
  std::string String() {
    if (!Eat('"')) Bad("expected a string");
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\' && pos_ < s_.size()) {
        char e = s_[pos_++];
        if (e == 'u') {  // names are ASCII in practice: keep a \uXXXX escape's low byte
          if (pos_ + 4 > s_.size()) Bad("short \\u escape");
          out += static_cast<char>(std::stoi(s_.substr(pos_, 4), nullptr, 16) & 0x7f);
          pos_ += 4;
          continue;
        }
        const char* from = "bfnrt";
        const char* to = "\b\f\n\r\t";
        const char* hit = std::strchr(from, e);
        c = hit ? to[hit - from] : e;
      }
      out += c;
    }
    if (!Eat('"')) Bad("unterminated string");
    return out;
  }
  Json Value() {
    Space();
    if (pos_ >= s_.size()) Bad("unexpected end");
    Json v;
    char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v.kind = Json::kObject;
      if (Eat('}')) return v;
      do {
        v.keys.push_back(String());
        if (!Eat(':')) Bad("expected ':'");
        v.items.push_back(Value());
      } while (Eat(','));
      if (!Eat('}')) Bad("expected '}'");
    } else if (c == '[') {
      ++pos_;
      v.kind = Json::kArray;
      if (Eat(']')) return v;
      do v.items.push_back(Value());
      while (Eat(','));
      if (!Eat(']')) Bad("expected ']'");
    } else if (c == '"') {
      v.kind = Json::kString;
      v.text = String();
    } else if (s_.compare(pos_, 4, "null") == 0) {
      pos_ += 4;
    } else if (s_.compare(pos_, 4, "true") == 0 || s_.compare(pos_, 5, "false") == 0) {
      v.kind = Json::kBool;
      v.number = s_[pos_] == 't';
      pos_ += s_[pos_] == 't' ? 4 : 5;
    } else {
      char* end = nullptr;
      v.kind = Json::kNumber;
      v.number = std::strtod(s_.c_str() + pos_, &end);
      if (end == s_.c_str() + pos_) Bad("unexpected character");
      pos_ = static_cast<size_t>(end - s_.c_str());
    }
    return v;
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// The sidecar's inputs and outputs as signature lines ("" when it has none).
std::string SignatureFromMetadata(const std::string& json, const std::string& where) {
  if (json.empty()) return "";
  Json meta;
  try {
    meta = JsonReader(json).Document();
  } catch (const std::exception& e) {
    Fail(where + ": " + e.what());
  }
  std::string lines;
  for (const char* kind : {"input", "output"}) {
    const Json* list = meta.Get(std::string(kind) + "s");
    if (list == nullptr || list->kind != Json::kArray) continue;
    for (const Json& t : list->items) {
      const Json *name = t.Get("name"), *dtype = t.Get("dtype"), *shape = t.Get("shape");
      if (!name || !dtype || !shape || shape->kind != Json::kArray) {
        Fail(where + ": an " + kind + " lacks its name, dtype or shape");
      }
      std::string dims;
      for (const Json& d : shape->items) {
        dims += (dims.empty() ? "" : "x") +
                (d.kind == Json::kNumber ? std::to_string(static_cast<int64_t>(d.number)) : "?");
      }
      std::string compact;  // names without whitespace, as bundles' signatures write them
      for (char c : name->text) {
        if (!std::isspace(static_cast<unsigned char>(c))) compact += c;
      }
      lines += std::string(kind) + " " + compact + " " + dtype->text + " " +
               (dims.empty() ? "scalar" : dims) + "\n";
    }
  }
  return lines;
}


// ---- loading ----

std::string MachineName(uint16_t machine) {
  if (machine == EM_X86_64) return "x86-64";
  if (machine == EM_AARCH64) return "aarch64";
  return "ELF machine " + std::to_string(machine);
}

// dlopen() reports a library built for another CPU as "No such file or directory", so check
// the ELF header first.
void CheckArch(const std::string& what, const unsigned char* header, size_t size) {
#if defined(__x86_64__)
  const uint16_t host = EM_X86_64;
#elif defined(__aarch64__)
  const uint16_t host = EM_AARCH64;
#else
  const uint16_t host = EM_NONE;
#endif
  if (size < 20 || std::memcmp(header, ELFMAG, SELFMAG) != 0) {
    Fail(what + " is not an ELF shared library");
  }
  uint16_t machine = header[18] | header[19] << 8;  // e_machine
  if (host != EM_NONE && machine != host) {
    Fail(what + " is built for " + MachineName(machine) + ", this program for " +
         MachineName(host));
  }
}

// The folder of this library, with a trailing slash.
std::string LibraryDir() {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&bridge_model_api_version), &info) || !info.dli_fname) {
    return "./";
  }
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "./" : path.substr(0, slash + 1);
}

// Runs f with fd 2 pointed at /dev/null: TVM logs a line per function ("Scope Loaded") while
// loading an executable.
template <typename F>
auto QuietStderr(F f) {
  std::fflush(stderr);
  int saved = dup(2), null = open("/dev/null", O_WRONLY);
  if (null >= 0) dup2(null, 2);
  struct Restore {
    int saved, null;
    ~Restore() {
      if (saved >= 0) dup2(saved, 2), close(saved);
      if (null >= 0) close(null);
    }
  } restore{saved, null};
  return f();
}

// The cores this process may run on (its affinity mask; taskset and cgroups shrink it).
int AllowedCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// TVM sizes its one CPU pool from TVM_NUM_THREADS when it starts (otherwise half the logical
// cores on x86): make it the usable cores, or more when more threads are asked for.
void SizeThreadPool(int wanted) {
  const char* env = std::getenv("TVM_NUM_THREADS");
  int current = env ? std::atoi(env) : 0;
  int size = std::max(current > 0 ? current : AllowedCores(), wanted);
  if (size != current) setenv("TVM_NUM_THREADS", std::to_string(size).c_str(), 1);
}

// The size of TVM's CPU pool (TVM_NUM_THREADS, which SizeThreadPool set before it started).
int PoolCapacity() {
  const char* env = std::getenv("TVM_NUM_THREADS");
  int size = env ? std::atoi(env) : 0;
  return size > 0 ? size : AllowedCores();
}

// Weights kept out of the library, in key order (bridge names them p00000, p00001, ...).
std::vector<ffi::Tensor> SortedParams(const ffi::Map<ffi::String, ffi::Tensor>& table) {
  std::map<std::string, ffi::Tensor> sorted;
  for (const auto& kv : table) sorted.emplace(std::string(kv.first), kv.second);
  std::vector<ffi::Tensor> out;
  for (auto& kv : sorted) out.push_back(kv.second);
  return out;
}

// Host or device memory that the caller owns: the tensor never frees it.
struct Borrowed {
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

bool Compact(const DLTensor& t) { return ffi::IsContiguous(t); }

// Flattens a VM result (a tensor or a possibly nested tuple) into tensors.
void CollectTensors(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) CollectTensors(item, out);
  } else {
    Fail("the result holds a " + value.GetTypeKey() + ", not a tensor");
  }
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\', out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

struct bridge_model {
  std::string what;  // the file (or "model in memory") named in error messages
  ffi::Optional<ffi::Module> library, vm;  // set by Start
  ffi::Function main;
  std::vector<ffi::Tensor> params;
  std::vector<Spec> inputs, outputs;
  DLDevice device{kDLCPU, 0};
  int threads = 0;
  std::vector<ffi::Tensor> staging;  // aligned copies of inputs that cannot be read in place
  std::vector<ffi::Tensor> results;
  bool ran = false;

  void Start(const std::string& path, const std::string& signature, const std::string& params_at,
             const ffi::Optional<ffi::Bytes>& params_bytes, const bridge_model_options& opts);
  std::vector<ffi::Tensor> Arguments(const DLTensor* in, int n);
  void ApplyThreads();
  ffi::Any Call(std::vector<ffi::AnyView>& args);
  void Sync();
  void Run(const DLTensor* in, int n);
  void CopyResult(int index, DLTensor* out) const;
  void Profile(const DLTensor* in, int n, int runs, const std::string& json_path);
};

void bridge_model::Start(const std::string& path, const std::string& signature,
                         const std::string& params_at,
                         const ffi::Optional<ffi::Bytes>& params_bytes,
                         const bridge_model_options& opts) {
  if (opts.num_threads < 0) {
    Fail("num_threads must be >= 0, got " + std::to_string(opts.num_threads));
  }
  int device_type = opts.device_type ? opts.device_type : kDefaultDevice;
  if (device_type != kDLCPU && device_type != kDLCUDA) {
    Fail("device_type must be kDLCPU (1) or kDLCUDA (2), got " + std::to_string(device_type));
  }
  SizeThreadPool(opts.num_threads);
  ParseSignature(signature, &inputs, &outputs);
  if (device_type == kDLCUDA) {
    std::string cuda = LibraryDir() + "libtvm_runtime_cuda.so";
    if (!dlopen(cuda.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
      Fail(std::string("cannot load ") + dlerror());
    }
    device = DLDevice{kDLCUDA, 0};
  }
  library = QuietStderr([&] {
    return Global("ffi.Module.load_from_file.so")(ffi::String(path), ffi::String("so"))
        .cast<ffi::Module>();
  });
  ffi::Optional<ffi::Function> load_exec = library.value()->GetFunction("vm_load_executable");
  if (!load_exec) Fail(what + " is not a Relax VM library (no vm_load_executable)");
  vm = QuietStderr([&] { return (*load_exec)().cast<ffi::Module>(); });
  // One (device type, device id, allocator) triple per device; allocator 2 = pooled.
  ffi::Function init = vm.value()->GetFunction("vm_initialization").value();
  if (device.device_type == kDLCPU) {
    init(static_cast<int>(kDLCPU), 0, 2);
  } else {
    init(static_cast<int>(device.device_type), 0, 2, static_cast<int>(kDLCPU), 0, 2);
  }
  ffi::Optional<ffi::Function> main_fn = vm.value()->GetFunction("main");
  if (!main_fn) Fail(what + " has no function main");
  main = *main_fn;

  std::vector<ffi::Tensor> host_params;
  if (params_bytes) {
    host_params = SortedParams(Global("runtime.LoadParams")(*params_bytes)
                                   .cast<ffi::Map<ffi::String, ffi::Tensor>>());
  } else if (!params_at.empty()) {
    host_params = SortedParams(Global("runtime.LoadParamsFromFile")(ffi::String(params_at))
                                   .cast<ffi::Map<ffi::String, ffi::Tensor>>());
  }
  static ffi::Function to_device = Global("runtime.TVMTensorCopyFromTo");
  static ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  for (ffi::Tensor& p : host_params) {
    if (device.device_type == kDLCPU) {
      params.push_back(p);
      continue;
    }
    ffi::ShapeView view = p.shape();
    ffi::Tensor on_device = alloc(ffi::Shape(view.begin(), view.end()), p.dtype(), device,
                                  ffi::Optional<ffi::String>())
                                .cast<ffi::Tensor>();
    to_device(p, on_device);
    params.push_back(on_device);
  }
  threads = std::min(opts.num_threads ? opts.num_threads : PoolCapacity(), PoolCapacity());
  staging.resize(inputs.size());
}

// The inputs as tensors the VM reads: the caller's memory where it can, else staged copies.
std::vector<ffi::Tensor> bridge_model::Arguments(const DLTensor* in, int n) {
  if (n < 0 || (n > 0 && in == nullptr)) Fail(what + ": inputs is NULL");
  if (!inputs.empty() && static_cast<size_t>(n) != inputs.size()) {
    std::string expected;
    for (const Spec& s : inputs) {
      expected += (expected.empty() ? "" : "; ") + s.name + " " + s.dtype_name + " " +
                  ShapeText(s.shape.data(), static_cast<int>(s.shape.size()));
    }
    Fail(what + ": " + std::to_string(n) + " input(s) given, the model takes " +
         std::to_string(inputs.size()) + ": " + expected);
  }
  if (staging.size() < static_cast<size_t>(n)) staging.resize(n);
  static ffi::Function copy = Global("runtime.TVMTensorCopyFromTo");
  static ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  std::vector<ffi::Tensor> out;
  for (int i = 0; i < n; ++i) {
    const DLTensor& t = in[i];
    std::string name = i < static_cast<int>(inputs.size()) ? inputs[i].name : std::to_string(i);
    if (t.data == nullptr || (t.ndim > 0 && t.shape == nullptr) || t.ndim < 0) {
      Fail(what + ": input " + name + " has no data or shape");
    }
    if (i < static_cast<int>(inputs.size())) {
      const Spec& s = inputs[i];
      bool same = t.ndim == static_cast<int>(s.shape.size()) && SameDtype(t.dtype, s.dtype);
      for (int d = 0; same && d < t.ndim; ++d) same = s.shape[d] < 0 || s.shape[d] == t.shape[d];
      if (!same) {
        Fail(what + ": input " + s.name + " expects " + s.dtype_name + " " +
             ShapeText(s.shape.data(), static_cast<int>(s.shape.size())) +
             ", got " + NameOf(t.dtype) + " " + ShapeText(t.shape, t.ndim));
      }
    }
    if (t.device.device_type != kDLCPU && t.device.device_type != device.device_type) {
      Fail(what + ": input " + name + " is on device type " +
           std::to_string(t.device.device_type) + ", the model runs on " +
           std::to_string(device.device_type));
    }
    ffi::ShapeView shape(t.shape, t.ndim);
    char* data = static_cast<char*>(t.data) + t.byte_offset;
    bool here = t.device.device_type == device.device_type;
    bool aligned = reinterpret_cast<uintptr_t>(data) % kAlignment == 0;
    if (here && aligned && Compact(t)) {  // read in place
      out.push_back(ffi::Tensor::FromNDAlloc(Borrowed{data}, shape, t.dtype, t.device));
      continue;
    }
    ffi::Tensor& stage = staging[i];
    bool fits = stage.defined() && SameDtype(stage.dtype(), t.dtype) &&
                stage.shape().size() == static_cast<size_t>(t.ndim) &&
                std::equal(shape.begin(), shape.end(), stage.shape().begin());
    if (!fits) {
      stage = alloc(ffi::Shape(shape.begin(), shape.end()), t.dtype, device,
                    ffi::Optional<ffi::String>())
                  .cast<ffi::Tensor>();
    }
    if (!Compact(t)) Fail(what + ": input " + name + " is not C-contiguous");
    copy(ffi::Tensor::FromNDAlloc(Borrowed{data}, shape, t.dtype, t.device), stage);
    out.push_back(stage);
  }
  return out;
}

void bridge_model::ApplyThreads() {
  if (device.device_type != kDLCPU) return;
  static ffi::Function num = Global("runtime.NumThreads");
  static ffi::Function config = Global("runtime.config_threadpool");
  if (num().cast<int64_t>() != threads) {
    config(1, threads);  // 1: big cores first
    threads = static_cast<int>(num().cast<int64_t>());  // a pool started earlier may be smaller
  }
}

void bridge_model::Sync() {
  if (device.device_type == kDLCPU) return;
  static ffi::Function sync = Global("runtime.Device_StreamSync");
  sync(device, static_cast<int64_t>(0));  // 0: the default stream
}

ffi::Any bridge_model::Call(std::vector<ffi::AnyView>& args) {
  ffi::Any result;
  main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  Sync();  // GPU kernels run asynchronously: a call ends when the stream is drained
  return result;
}

void bridge_model::Run(const DLTensor* in, int n) {
  std::vector<ffi::Tensor> tensors = Arguments(in, n);
  for (const ffi::Tensor& p : params) tensors.push_back(p);
  std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
  ApplyThreads();
  results.clear();
  ran = false;
  ffi::Any value = Call(args);
  CollectTensors(value, &results);
  ran = true;
}

void bridge_model::CopyResult(int index, DLTensor* out) const {
  if (!ran) Fail(what + ": no results yet (run the model first)");
  if (index < 0 || index >= static_cast<int>(results.size())) {
    Fail(what + ": no result " + std::to_string(index) + " (the last run returned " +
         std::to_string(results.size()) + ")");
  }
  std::string name = std::to_string(index);
  if (out == nullptr || out->data == nullptr) Fail(what + ": output " + name + " has no data");
  const ffi::Tensor& r = results[index];
  ffi::ShapeView shape = r.shape();
  bool same = out->ndim == static_cast<int>(shape.size()) && SameDtype(out->dtype, r.dtype()) &&
              (out->ndim == 0 || out->shape != nullptr);
  for (int d = 0; same && d < out->ndim; ++d) same = out->shape[d] == shape[d];
  if (!same) {
    Fail(what + ": output " + std::to_string(index) + " is " + NameOf(r.dtype()) + " " +
         ShapeText(shape.data(), static_cast<int>(shape.size())) + ", the buffer given is " +
         NameOf(out->dtype) + " " + ShapeText(out->shape, std::max(out->ndim, 0)));
  }
  if (!Compact(*out)) Fail(what + ": output buffer " + name + " is not C-contiguous");
  if (out->device.device_type != kDLCPU && out->device.device_type != device.device_type) {
    Fail(what + ": output buffer " + std::to_string(index) + " is on an unsupported device");
  }
  char* data = static_cast<char*>(out->data) + out->byte_offset;
  const char* from = static_cast<const char*>(r.data_ptr());
  if (data == from) return;  // the result already lives in the caller's buffer
  if (out->device.device_type == kDLCPU && r.device().device_type == kDLCPU) {
    std::memmove(data, from, ffi::GetDataSize(*r.GetDLTensorPtr()));
    return;
  }
  static ffi::Function copy = Global("runtime.TVMTensorCopyFromTo");
  copy(r, ffi::Tensor::FromNDAlloc(Borrowed{data}, shape, out->dtype, out->device));
  const_cast<bridge_model*>(this)->Sync();
}

// Times every VM call over `runs` runs; writes the raw profile (median per call, in call
// order) to json_path.
void bridge_model::Profile(const DLTensor* in, int n, int runs, const std::string& json_path) {
  if (runs < 1) Fail(what + ": profile runs must be >= 1, got " + std::to_string(runs));
  std::vector<ffi::Tensor> tensors = Arguments(in, n);
  for (const ffi::Tensor& p : params) tensors.push_back(p);
  std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
  ApplyThreads();
  Call(args);  // warm-up: thread pool start, first allocations

  using Clock = std::chrono::steady_clock;
  struct Record {
    std::vector<std::string> names;
    std::vector<double> us;
    std::vector<std::pair<size_t, Clock::time_point>> open;  // calls under way (may nest)
  };
  // Shared with the hook, so that a hook the VM kept could never see a dead record.
  auto shared = std::make_shared<Record>();
  Record& record = *shared;
  bridge_model* self = this;
  ffi::Function instrument = ffi::Function::FromPacked(
      [shared, self](ffi::PackedArgs a, ffi::Any* rv) {
        Record& r = *shared;
        if (a[2].cast<bool>()) {  // before the call
          r.names.push_back(std::string(a[1].cast<ffi::String>()));
          r.us.push_back(0.0);
          r.open.emplace_back(r.names.size() - 1, Clock::now());
        } else if (!r.open.empty()) {
          self->Sync();
          auto [index, start] = r.open.back();
          r.open.pop_back();
          r.us[index] = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
        }
        *rv = 0;  // VMInstrumentReturnKind::kNoOp
      });
  ffi::Function set_instrument = vm.value()->GetFunction("set_instrument").value();
  std::vector<std::string> names;
  std::vector<std::vector<double>> samples;
  set_instrument(instrument);
  try {
    for (int run = 0; run < runs; ++run) {
      record.names.clear(), record.us.clear(), record.open.clear();
      Call(args);
      if (run == 0) {
        names = record.names;
        samples.assign(names.size(), {});
      } else if (record.names != names) {
        Fail(what + ": the model made different calls in different runs; cannot profile it");
      }
      for (size_t i = 0; i < names.size(); ++i) samples[i].push_back(record.us[i]);
    }
  } catch (...) {
    set_instrument(ffi::Function(nullptr));
    throw;
  }
  set_instrument(ffi::Function(nullptr));

  std::string json = "{\"format\": \"bridge-profile-raw\", \"version\": 1, ";
  json += "\"source\": \"runner\", ";
  json += std::string("\"device\": \"") + (device.device_type == kDLCPU ? "cpu" : "cuda") + "\", ";
  json += "\"threads\": " + std::to_string(device.device_type == kDLCPU ? threads : 1) + ", ";
  json += "\"runs\": " + std::to_string(runs) + ", \"calls\": [";
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<double>& s = samples[i];
    std::sort(s.begin(), s.end());
    double median = s.size() % 2 ? s[s.size() / 2] : (s[s.size() / 2 - 1] + s[s.size() / 2]) / 2;
    char us[64];
    std::snprintf(us, sizeof(us), "%.3f", median);
    json += std::string(i ? ",\n  " : "\n  ") + "{\"name\": " + JsonString(names[i]) +
            ", \"us\": " + us + "}";
  }
  json += names.empty() ? "]}\n" : "\n]}\n";
  std::ofstream out(json_path, std::ios::binary);
  out << json;
  if (!out) Fail("cannot write " + json_path);
}

namespace {

bridge_model_options Options(const bridge_model_options* options) {
  return options ? *options : bridge_model_options{0, 0};
}

// A file holding a library's bytes for dlopen: an anonymous in-memory file (memfd, opened as
// /proc/self/fd/N), or where that is missing (no memfd_create, no /proc) a temporary file,
// unlinked when this is destroyed (a loaded library stays mapped).
class LibraryFile {
 public:
  LibraryFile(const void* bytes, size_t size) {
#ifdef MFD_CLOEXEC
    fd_ = memfd_create("bridge_model", MFD_CLOEXEC);
    path_ = "/proc/self/fd/" + std::to_string(fd_);
    if (fd_ >= 0 && access(path_.c_str(), R_OK) != 0) close(fd_), fd_ = -1;
#endif
    if (fd_ < 0) {
      const char* dir = std::getenv("TMPDIR");
      path_ = std::string(dir && *dir ? dir : "/tmp") + "/bridge_model_XXXXXX.so";
      fd_ = mkstemps(&path_[0], 3);
      if (fd_ < 0) Fail("cannot create a temporary file for the library (" + path_ + ")");
      temporary_ = true;
    }
    const char* p = static_cast<const char*>(bytes);
    for (size_t done = 0; done < size;) {
      ssize_t n = write(fd_, p + done, size - done);
      if (n <= 0) Fail("cannot write the library to " + path_);
      done += static_cast<size_t>(n);
    }
  }
  ~LibraryFile() {
    if (fd_ >= 0) close(fd_);
    if (temporary_) unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  bool temporary_ = false;
  std::string path_;
};

int Info(const std::vector<Spec>& specs, const char* kind, int index, bridge_tensor_info* info) {
  return Guard([&] {
    if (info == nullptr) Fail("info is NULL");
    if (index < 0 || index >= static_cast<int>(specs.size())) {
      Fail(std::string("no ") + kind + " " + std::to_string(index) + " (the model has " +
           std::to_string(specs.size()) + ")");
    }
    const Spec& s = specs[index];
    *info = bridge_tensor_info{s.name.c_str(), static_cast<int32_t>(s.shape.size()),
                               s.shape.data(), s.dtype, s.dtype_name.c_str()};
  });
}

}  // namespace

extern "C" {

int bridge_model_api_version(void) { return BRIDGE_MODEL_API_VERSION; }

const char* bridge_model_last_error(void) { return last_error.c_str(); }

bridge_model* bridge_model_load(const char* path, const bridge_model_options* options) {
  std::unique_ptr<bridge_model> model(new bridge_model);
  int rc = Guard([&] {
    if (path == nullptr) Fail("path is NULL");
    std::string file = path;
    // dlopen() does not look in the working directory for a bare file name.
    if (file.find('/') == std::string::npos) file = "./" + file;
    model->what = path;
    std::ifstream in(file, std::ios::binary);
    if (!in) Fail("cannot open model " + std::string(path));
    unsigned char header[20] = {0};
    in.read(reinterpret_cast<char*>(header), sizeof(header));
    CheckArch(path, header, static_cast<size_t>(in.gcount()));
    std::string stem = file.substr(0, file.rfind('.'));
    std::string params = stem + ".params";
    if (!std::ifstream(params).good()) params.clear();
    // model.signature (bundles write it), else the inputs and outputs of model.meta.json.
    std::string signature = ReadText(stem + ".signature");
    if (signature.empty()) {
      signature = SignatureFromMetadata(ReadText(stem + ".meta.json"), stem + ".meta.json");
    }
    model->Start(file, signature, params, std::nullopt, Options(options));
  });
  return rc == 0 ? model.release() : nullptr;
}

bridge_model* bridge_model_load_from_memory(const void* library, size_t library_size,
                                            const void* params, size_t params_size,
                                            const char* signature,
                                            const bridge_model_options* options) {
  std::unique_ptr<bridge_model> model(new bridge_model);
  int rc = Guard([&] {
    model->what = "model in memory";
    if (library == nullptr || library_size == 0) Fail("model in memory: library is empty");
    CheckArch("model in memory", static_cast<const unsigned char*>(library), library_size);
    LibraryFile file(library, library_size);
    ffi::Optional<ffi::Bytes> weights;
    if (params != nullptr && params_size > 0) {
      weights = ffi::Bytes(static_cast<const char*>(params), params_size);
    }
    model->Start(file.path(), signature ? signature : "", "", weights, Options(options));
  });
  return rc == 0 ? model.release() : nullptr;
}

void bridge_model_free(bridge_model* model) { delete model; }

int bridge_model_num_inputs(const bridge_model* model) {
  return model ? static_cast<int>(model->inputs.size()) : -1;
}

int bridge_model_num_outputs(const bridge_model* model) {
  return model ? static_cast<int>(model->outputs.size()) : -1;
}

int bridge_model_input_info(const bridge_model* model, int index, bridge_tensor_info* info) {
  if (!model) return Guard([] { Fail("model is NULL"); });
  return Info(model->inputs, "input", index, info);
}

int bridge_model_output_info(const bridge_model* model, int index, bridge_tensor_info* info) {
  if (!model) return Guard([] { Fail("model is NULL"); });
  return Info(model->outputs, "output", index, info);
}

int bridge_model_set_threads(bridge_model* model, int num_threads) {
  return Guard([&] {
    if (!model) Fail("model is NULL");
    if (num_threads < 1) Fail("num_threads must be >= 1, got " + std::to_string(num_threads));
    model->threads = std::min(num_threads, PoolCapacity());
  });
}

int bridge_model_threads(const bridge_model* model) { return model ? model->threads : -1; }

DLDevice bridge_model_device(const bridge_model* model) {
  return model ? model->device : DLDevice{kDLCPU, 0};
}

int bridge_model_run(bridge_model* model, const DLTensor* inputs, int num_inputs,
                     DLTensor* outputs, int num_outputs) {
  return Guard([&] {
    if (!model) Fail("model is NULL");
    if (outputs != nullptr && num_outputs < 0) Fail(model->what + ": num_outputs < 0");
    model->Run(inputs, num_inputs);
    if (outputs == nullptr) return;
    if (num_outputs != static_cast<int>(model->results.size())) {
      Fail(model->what + ": " + std::to_string(num_outputs) +
           " output buffer(s) given, the model returned " +
           std::to_string(model->results.size()));
    }
    for (int i = 0; i < num_outputs; ++i) model->CopyResult(i, &outputs[i]);
  });
}

int bridge_model_result_count(const bridge_model* model) {
  return model && model->ran ? static_cast<int>(model->results.size()) : -1;
}

int bridge_model_result(const bridge_model* model, int index, DLTensor* view) {
  return Guard([&] {
    if (!model) Fail("model is NULL");
    if (view == nullptr) Fail(model->what + ": view is NULL");
    if (!model->ran) Fail(model->what + ": no results yet (run the model first)");
    if (index < 0 || index >= static_cast<int>(model->results.size())) {
      Fail(model->what + ": no result " + std::to_string(index) + " (the last run returned " +
           std::to_string(model->results.size()) + ")");
    }
    *view = *model->results[index].GetDLTensorPtr();
  });
}

int bridge_model_copy_result(const bridge_model* model, int index, DLTensor* out) {
  return Guard([&] {
    if (!model) Fail("model is NULL");
    model->CopyResult(index, out);
  });
}

int bridge_model_profile(bridge_model* model, const DLTensor* inputs, int num_inputs, int runs,
                         const char* json_path) {
  return Guard([&] {
    if (!model) Fail("model is NULL");
    if (!json_path) Fail(model->what + ": json_path is NULL");
    model->Profile(inputs, num_inputs, runs, json_path);
  });
}

}  // extern "C"
