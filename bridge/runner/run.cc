// run.cc - bridge's native runner for Relax VM libraries exported by TVM 0.27.
//
//   run [--model PATH] [--out DIR] [--bench N] [--threads N] [--device cpu|cuda] [in0.npy ...]
//
// Loads the model library (default: model.so next to this binary), calls its
// `main` with the .npy inputs and, with --out DIR, writes DIR/output<i>.npy for
// every tensor in the result (a single tensor, or a tuple flattened
// depth-first); without --out it only prints each output's shape and dtype.
// With --bench N it then calls `main` N more times and prints the median and
// minimum latency. Kernels run on --threads N threads (default: the cores this
// process may use, from sched_getaffinity; TVM_NUM_THREADS when set).
// If model.signature sits next to the model (bundles write it: one line
// "input NAME DTYPE DIMS" per input, DIMS like 1x28x28x1, ? for any), the
// inputs are checked against it before the call.
// If model.params sits next to the model (weights kept out of the library), its
// tensors are passed after the inputs, in key order. With --device cuda (the
// default of runners built with -DBRIDGE_CUDA) inputs and weights are copied to
// GPU 0 and libtvm_runtime_cuda.so is loaded from the runner's folder.
// Uses only the tvm_ffi headers; link with -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi
// (libtvm_runtime registers the loader for Relax VM executables).

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <dlfcn.h>
#include <elf.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr const char* kUsage =
    "usage: run [--model PATH] [--out DIR] [--bench N] [--threads N] [--device cpu|cuda]"
    " in0.npy [in1.npy ...]\n"
    "  --model PATH  the model library (default: model.so beside run)\n"
    "  --out DIR     write DIR/output0.npy, output1.npy, ... (default: write nothing,"
    " print shapes)\n"
    "  --bench N     then time N more calls; print the median and minimum\n"
    "  --threads N   kernel threads (default: the cores this process may use)\n"
    "  --device D    cpu or cuda (CUDA bundles default to cuda)\n";
#ifdef BRIDGE_CUDA
constexpr const char* kDefaultDevice = "cuda";
#else
constexpr const char* kDefaultDevice = "cpu";
#endif

[[noreturn]] void Fail(const std::string& msg) { throw std::runtime_error(msg); }

// A mistake in the command line: reported with the usage text, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void Usage(const std::string& msg) { throw UsageError(msg); }

// ---- .npy files: read format 1.0-3.0, write 1.0; little-endian, C order ----

struct NpyType {
  const char* descr;
  DLDataType dtype;
};
constexpr NpyType kNpyTypes[] = {
    {"<f4", {kDLFloat, 32, 1}},
    {"<i4", {kDLInt, 32, 1}},
    {"<i8", {kDLInt, 64, 1}},
    {"|i1", {kDLInt, 8, 1}},   // quantized (TFLite int8/uint8) models
    {"|u1", {kDLUInt, 8, 1}},
};

// Host buffers for input tensors, 64-byte aligned as TVM kernels expect.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!t->data) Fail("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// The text following `'key':` in a .npy header dict.
std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) Fail("npy header lacks '" + key + "'");
  pos = header.find_first_not_of(' ', header.find(':', pos) + 1);
  return header.substr(pos);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open " + path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    Fail(path + ": not a .npy file");
  }
  unsigned char len[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(len), magic[6] == 1 ? 2 : 4);
  uint32_t header_len = len[0] | len[1] << 8 | len[2] << 16 | uint32_t(len[3]) << 24;
  std::string header(header_len, '\0');
  if (!in.read(&header[0], header_len)) Fail(path + ": truncated header");

  std::string descr = HeaderValue(header, "descr");
  descr = descr.substr(1, descr.find('\'', 1) - 1);
  const NpyType* type = nullptr;
  for (const NpyType& t : kNpyTypes) {
    if (descr == t.descr) type = &t;
  }
  if (!type) Fail(path + ": unsupported dtype '" + descr + "' (need <f4, <i4, <i8, |i1 or |u1)");
  if (HeaderValue(header, "fortran_order").rfind("False", 0) != 0) {
    Fail(path + ": Fortran-order arrays are not supported");
  }
  std::string dims = HeaderValue(header, "shape");
  std::stringstream ss(dims.substr(1, dims.find(')') - 1));
  std::vector<int64_t> shape;
  for (std::string dim; std::getline(ss, dim, ',');) {
    if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(dim));
  }

  ffi::ShapeView shape_view(shape.data(), shape.size());
  ffi::Tensor t =
      ffi::Tensor::FromNDAlloc(AlignedAlloc(), shape_view, type->dtype, DLDevice{kDLCPU, 0});
  if (!in.read(static_cast<char*>(t.data_ptr()), ffi::GetDataSize(t))) {
    Fail(path + ": truncated data");
  }
  return t;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  const DLTensor* t = tensor.GetDLTensorPtr();
  if (t->device.device_type != kDLCPU) Fail("output is not on the CPU");
  if (!ffi::IsContiguous(*t)) Fail("output is not contiguous");
  const char* descr = nullptr;
  for (const NpyType& k : kNpyTypes) {
    if (k.dtype.code == t->dtype.code && k.dtype.bits == t->dtype.bits && t->dtype.lanes == 1) {
      descr = k.descr;
    }
  }
  if (!descr) Fail("output dtype is not float32, int32, int64, int8 or uint8");

  std::string shape;  // "()", "(n,)" or "(a, b, ...)"
  for (int i = 0; i < t->ndim; ++i) shape += (i ? ", " : "") + std::to_string(t->shape[i]);
  if (t->ndim == 1) shape += ",";
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': (" + shape + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // 10-byte preamble + header: 64n
  header += '\n';

  std::ofstream out(path, std::ios::binary);
  const char len[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(len, 2);
  out << header;
  out.write(static_cast<const char*>(t->data) + t->byte_offset, ffi::GetDataSize(*t));
  if (!out) Fail("cannot write " + path);
}

// ---- model ----

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

std::string MachineName(uint16_t machine) {
  if (machine == EM_X86_64) return "x86-64";
  if (machine == EM_AARCH64) return "aarch64";
  return "ELF machine " + std::to_string(machine);
}

// dlopen() reports a library built for another CPU as "No such file or
// directory", so check the ELF header first.
void CheckModelArch(const std::string& path) {
#if defined(__x86_64__)
  const uint16_t host = EM_X86_64;
#elif defined(__aarch64__)
  const uint16_t host = EM_AARCH64;
#else
  const uint16_t host = EM_NONE;
#endif
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open model " + path);
  unsigned char h[20];
  if (!in.read(reinterpret_cast<char*>(h), sizeof(h)) || std::memcmp(h, ELFMAG, SELFMAG) != 0) {
    Fail(path + " is not an ELF shared library");
  }
  uint16_t machine = h[18] | h[19] << 8;  // e_machine
  if (host != EM_NONE && machine != host) {
    Fail(path + " is built for " + MachineName(machine) + ", this runner for " +
         MachineName(host));
  }
}

// The folder of this binary, with a trailing slash.
std::string ExeDir() {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe));
  if (n <= 0 || n == sizeof(exe)) return "./";
  std::string path(exe, n);
  return path.substr(0, path.rfind('/') + 1);
}

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

// Runs f with fd 2 pointed at /dev/null: TVM logs a line per function ("Scope Loaded")
// while loading an executable.
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

ffi::Function Global(const char* name) {
  ffi::Optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) Fail(std::string("the TVM runtime lacks ") + name);
  return *f;
}

// A copy of `t` on `device` (itself when it is already there).
ffi::Tensor OnDevice(const ffi::Tensor& t, DLDevice device) {
  DLDevice from = t.GetDLTensorPtr()->device;
  if (from.device_type == device.device_type && from.device_id == device.device_id) return t;
  static ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  static ffi::Function copy = Global("runtime.TVMTensorCopyFromTo");
  ffi::ShapeView view = t.shape();
  ffi::Shape shape(view.begin(), view.end());
  ffi::Tensor out = alloc(shape, t.dtype(), device, ffi::Optional<ffi::String>())
                        .cast<ffi::Tensor>();
  copy(t, out);
  return out;
}

// Weights kept out of the library: model.params beside it, passed in key order.
std::vector<ffi::Tensor> LoadParams(const std::string& model) {
  std::string path = model.substr(0, model.rfind('.')) + ".params";
  if (!Exists(path)) return {};
  auto params = Global("runtime.LoadParamsFromFile")(path).cast<ffi::Map<ffi::String, ffi::Tensor>>();
  std::map<std::string, ffi::Tensor> sorted;
  for (const auto& kv : params) sorted.emplace(std::string(kv.first), kv.second);
  std::vector<ffi::Tensor> out;
  for (auto& kv : sorted) out.push_back(kv.second);
  return out;
}

// ---- the model's inputs, from model.signature beside it ----

struct InputSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;  // -1: any size
};

std::string DtypeName(DLDataType t) {
  const char* kind = t.code == kDLFloat ? "float" : t.code == kDLUInt ? "uint" : "int";
  return kind + std::to_string(t.bits);
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

std::string Describe(const InputSpec& in) {
  return in.name + " " + in.dtype + " " + ShapeText(in.shape);
}

std::vector<InputSpec> LoadSignature(const std::string& model) {
  std::ifstream in(model.substr(0, model.rfind('.')) + ".signature");
  std::vector<InputSpec> specs;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string kind, dims;
    InputSpec spec;
    if (!(fields >> kind >> spec.name >> spec.dtype >> dims) || kind != "input") continue;
    std::stringstream ss(dims == "scalar" ? "" : dims);
    for (std::string dim; std::getline(ss, dim, 'x');) {
      if (!dim.empty()) spec.shape.push_back(dim == "?" ? -1 : std::stoll(dim));
    }
    specs.push_back(spec);
  }
  return specs;
}

std::string Expected(const std::vector<InputSpec>& specs) {
  std::string text;
  for (size_t i = 0; i < specs.size(); ++i) text += (i ? "; " : "") + Describe(specs[i]);
  return text;
}

// Refuses inputs that do not match the signature: count, dtype and every fixed dimension.
void CheckInputs(const std::vector<InputSpec>& specs, const std::vector<std::string>& paths,
                 const std::vector<ffi::Tensor>& tensors) {
  if (specs.empty()) return;
  if (paths.size() != specs.size()) {
    Usage(std::to_string(paths.size()) + " input file(s) given, the model takes " +
          std::to_string(specs.size()) + ": " + Expected(specs));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    ffi::ShapeView view = tensors[i].shape();
    std::vector<int64_t> got(view.begin(), view.end());
    std::string dtype = DtypeName(tensors[i].dtype());
    bool same = got.size() == specs[i].shape.size() && dtype == specs[i].dtype;
    for (size_t d = 0; same && d < got.size(); ++d) {
      same = specs[i].shape[d] < 0 || specs[i].shape[d] == got[d];
    }
    if (!same) {
      Usage(paths[i] + ": input " + specs[i].name + " expects " + specs[i].dtype + " " +
            ShapeText(specs[i].shape) + ", got " + dtype + " " + ShapeText(got));
    }
  }
}

// The cores this process may run on (its affinity mask; taskset and cgroups shrink it).
int AllowedCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

int ParseCount(const std::string& option, const char* text) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 0 || value > 1000000000) {
    Usage("bad value for " + option + ": " + text);
  }
  return static_cast<int>(value);
}

int Run(int argc, char** argv) {
  std::string model = ExeDir() + "model.so", out_dir, device_name = kDefaultDevice;
  int bench = 0, threads = 0;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "--model" && has_value) {
      model = argv[++i];
    } else if (arg == "--out" && has_value) {
      out_dir = argv[++i];
    } else if (arg == "--bench" && has_value) {
      bench = ParseCount(arg, argv[++i]);
    } else if (arg == "--device" && has_value) {
      device_name = argv[++i];
      if (device_name != "cpu" && device_name != "cuda") Usage("--device takes cpu or cuda");
    } else if (arg == "--threads" && has_value) {
      threads = ParseCount(arg, argv[++i]);
      if (threads < 1) Usage("--threads takes a count >= 1");
    } else if (arg.rfind("-", 0) == 0) {
      Usage("unknown option or missing value: " + arg);
    } else {
      inputs.push_back(arg);
    }
  }
  // Read by TVM's thread pool when it starts (at the first parallel kernel).
  if (threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
  } else if (!std::getenv("TVM_NUM_THREADS")) {
    setenv("TVM_NUM_THREADS", std::to_string(AllowedCores()).c_str(), 1);
  }
  threads = std::atoi(std::getenv("TVM_NUM_THREADS"));
  // dlopen() does not look in the working directory for a bare file name.
  if (model.find('/') == std::string::npos) model = "./" + model;
  CheckModelArch(model);

  DLDevice device{kDLCPU, 0};
  if (device_name == "cuda") {
    std::string cuda = ExeDir() + "libtvm_runtime_cuda.so";
    if (!dlopen(cuda.c_str(), RTLD_NOW | RTLD_GLOBAL)) Fail(std::string("cannot load ") + dlerror());
    device = DLDevice{kDLCUDA, 0};
  }

  ffi::Module lib = QuietStderr([&] { return ffi::Module::LoadFromFile(model); });
  ffi::Optional<ffi::Function> load_exec = lib->GetFunction("vm_load_executable");
  if (!load_exec) Fail(model + " is not a Relax VM library (no vm_load_executable)");
  ffi::Module vm = QuietStderr([&] { return (*load_exec)().cast<ffi::Module>(); });
  // One (device type, device id, allocator) triple per device; allocator 2 = pooled.
  ffi::Function init = vm->GetFunction("vm_initialization").value();
  if (device.device_type == kDLCPU) {
    init(static_cast<int>(kDLCPU), 0, 2);
  } else {
    init(static_cast<int>(device.device_type), 0, 2, static_cast<int>(kDLCPU), 0, 2);
  }
  ffi::Function main_fn = vm->GetFunction("main").value();

  std::vector<InputSpec> specs = LoadSignature(model);
  if (inputs.empty()) {
    Usage(specs.empty() ? "no input files given"
                        : "no input files given; the model takes " + Expected(specs));
  }
  std::vector<ffi::Tensor> tensors;
  for (const std::string& path : inputs) tensors.push_back(ReadNpy(path));
  CheckInputs(specs, inputs, tensors);
  for (ffi::Tensor& t : tensors) t = OnDevice(t, device);
  for (const ffi::Tensor& weight : LoadParams(model)) tensors.push_back(OnDevice(weight, device));
  std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
  // GPU kernels run asynchronously: a timed call ends when the device's stream is drained.
  ffi::Optional<ffi::Function> sync;
  if (device.device_type != kDLCPU) sync = Global("runtime.Device_StreamSync");
  auto call = [&] {
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    if (sync) (*sync)(device, static_cast<int64_t>(0));  // 0: the default stream
    return result;
  };

  std::vector<ffi::Tensor> outputs;
  CollectTensors(call(), &outputs);
  if (!out_dir.empty()) {
    std::filesystem::create_directories(out_dir);
    for (size_t i = 0; i < outputs.size(); ++i) {
      WriteNpy(out_dir + "/output" + std::to_string(i) + ".npy",
               OnDevice(outputs[i], DLDevice{kDLCPU, 0}));
    }
    std::printf("wrote %zu output(s) to %s\n", outputs.size(), out_dir.c_str());
  } else {
    for (size_t i = 0; i < outputs.size(); ++i) {
      ffi::ShapeView view = outputs[i].shape();
      std::printf("output%zu: %s %s\n", i, DtypeName(outputs[i].dtype()).c_str(),
                  ShapeText(std::vector<int64_t>(view.begin(), view.end())).c_str());
    }
    if (!bench) std::printf("(not written: pass --out DIR to save them as .npy)\n");
  }

  if (bench > 0) {
    std::vector<double> ms;
    for (int i = 0; i < bench; ++i) {
      auto start = std::chrono::steady_clock::now();
      call();
      std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
      ms.push_back(elapsed.count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("%d runs on %d thread(s): median %.3f ms, min %.3f ms\n", bench, threads,
                ms[ms.size() / 2], ms[0]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const ffi::Error& e) {
    std::cerr << "error: " << e.kind() << ": " << e.message() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
