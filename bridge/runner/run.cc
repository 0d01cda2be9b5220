// run.cc - bridge's native runner: a command-line client of bridge_model.h.
//
//   run [--model PATH] [--out DIR] [--bench N] [--threads N] [--device cpu|cuda]
//       [--profile out.json] [in0.npy ...]
//
// Loads the model library (default: model.so next to this binary) with libbridge_model.so,
// calls it with the .npy inputs and, with --out DIR, writes DIR/output<i>.npy for every tensor
// in the result (a single tensor, or a tuple flattened depth-first); without --out it only
// prints each output's shape and dtype. With --bench N it then calls the model N more times
// and prints the median and minimum latency. With --profile out.json it times every call the
// model's VM makes over --bench N runs (default 10) and writes bridge's raw profile json
// (`bridge profile --from out.json MODEL` renders it per layer). Kernels run on --threads N
// threads (default: the cores this process may use, from sched_getaffinity; TVM_NUM_THREADS
// when set). The inputs are checked against model.signature beside the model (bundles write
// it) before the call; model.params beside the model holds weights kept out of the library.
// With --device cuda (the default of runners built with -DBRIDGE_CUDA) the model runs on GPU 0.
// Link with -lbridge_model (and an rpath to the bundle folder).

#include "bridge_model.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: run [--model PATH] [--out DIR] [--bench N] [--threads N] [--device cpu|cuda]"
    " [--profile FILE] in0.npy [in1.npy ...]\n"
    "  --model PATH    the model library (default: model.so beside run)\n"
    "  --out DIR       write DIR/output0.npy, output1.npy, ... (default: write nothing,"
    " print shapes)\n"
    "  --bench N       then time N more calls; print the median and minimum\n"
    "  --threads N     kernel threads (default: the cores this process may use)\n"
    "  --device D      cpu or cuda (CUDA bundles default to cuda)\n"
    "  --profile FILE  time every kernel over --bench N runs (default 10); write bridge's raw"
    " profile json (render: bridge profile --from FILE MODEL)\n";
#ifdef BRIDGE_CUDA
constexpr const char* kDefaultDevice = "cuda";
#else
constexpr const char* kDefaultDevice = "cpu";
#endif
constexpr int kProfileRuns = 10;

[[noreturn]] void Fail(const std::string& msg) { throw std::runtime_error(msg); }

// A mistake in the command line: reported with the usage text, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void Usage(const std::string& msg) { throw UsageError(msg); }

// Fails with the API's last error unless rc is 0.
void Check(int rc) {
  if (rc != 0) Fail(bridge_model_last_error());
}

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

// A host tensor in a 64-byte aligned buffer (as TVM kernels expect, so the model reads it in
// place).
struct HostTensor {
  std::vector<int64_t> shape;
  DLDataType dtype{kDLFloat, 32, 1};
  std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};

  size_t Bytes() const {
    size_t n = (dtype.bits * dtype.lanes + 7) / 8;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  void Allocate() {
    size_t bytes = (Bytes() + 63) / 64 * 64;
    data.reset(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!data) Fail("out of memory");
  }
  DLTensor View() {
    return DLTensor{data.get(), DLDevice{kDLCPU, 0}, static_cast<int32_t>(shape.size()), dtype,
                    shape.data(), nullptr, 0};
  }
};

// The text following `'key':` in a .npy header dict.
std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) Fail("npy header lacks '" + key + "'");
  pos = header.find_first_not_of(' ', header.find(':', pos) + 1);
  return header.substr(pos);
}

HostTensor ReadNpy(const std::string& path) {
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
  HostTensor t;
  t.dtype = type->dtype;
  std::string dims = HeaderValue(header, "shape");
  std::stringstream ss(dims.substr(1, dims.find(')') - 1));
  for (std::string dim; std::getline(ss, dim, ',');) {
    if (dim.find_first_not_of(' ') != std::string::npos) t.shape.push_back(std::stoll(dim));
  }
  t.Allocate();
  if (!in.read(static_cast<char*>(t.data.get()), static_cast<std::streamsize>(t.Bytes()))) {
    Fail(path + ": truncated data");
  }
  return t;
}

void WriteNpy(const std::string& path, const DLTensor& t) {
  const char* descr = nullptr;
  for (const NpyType& k : kNpyTypes) {
    if (k.dtype.code == t.dtype.code && k.dtype.bits == t.dtype.bits && t.dtype.lanes == 1) {
      descr = k.descr;
    }
  }
  if (!descr) Fail("output dtype is not float32, int32, int64, int8 or uint8");

  std::string shape;  // "()", "(n,)" or "(a, b, ...)"
  size_t bytes = t.dtype.bits / 8;
  for (int i = 0; i < t.ndim; ++i) {
    shape += (i ? ", " : "") + std::to_string(t.shape[i]);
    bytes *= static_cast<size_t>(t.shape[i]);
  }
  if (t.ndim == 1) shape += ",";
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': (" + shape + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // 10-byte preamble + header: 64n
  header += '\n';

  std::ofstream out(path, std::ios::binary);
  const char len[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(len, 2);
  out << header;
  out.write(static_cast<const char*>(t.data) + t.byte_offset, static_cast<std::streamsize>(bytes));
  if (!out) Fail("cannot write " + path);
}

// The last run's result `index`, copied to the host when the model ran on a GPU.
HostTensor ResultOnHost(const bridge_model* model, int index) {
  DLTensor view;
  Check(bridge_model_result(model, index, &view));
  HostTensor host;
  host.shape.assign(view.shape, view.shape + view.ndim);
  host.dtype = view.dtype;
  host.Allocate();
  DLTensor out = host.View();
  Check(bridge_model_copy_result(model, index, &out));
  return host;
}

// ---- the model's inputs ----

std::string DtypeName(DLDataType t) {
  const char* kind = t.code == kDLFloat ? "float" : t.code == kDLUInt ? "uint" : "int";
  return kind + std::to_string(t.bits);
}

std::string ShapeText(const int64_t* shape, size_t ndim) {
  std::string text = "(";
  for (size_t i = 0; i < ndim; ++i) {
    text += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  }
  return text + (ndim == 1 ? ",)" : ")");
}

std::vector<bridge_tensor_info> Inputs(const bridge_model* model) {
  std::vector<bridge_tensor_info> specs(bridge_model_num_inputs(model));
  for (size_t i = 0; i < specs.size(); ++i) {
    Check(bridge_model_input_info(model, static_cast<int>(i), &specs[i]));
  }
  return specs;
}

std::string Expected(const std::vector<bridge_tensor_info>& specs) {
  std::string text;
  for (size_t i = 0; i < specs.size(); ++i) {
    text += (i ? "; " : "") + std::string(specs[i].name) + " " + specs[i].dtype_name + " " +
            ShapeText(specs[i].shape, specs[i].ndim);
  }
  return text;
}

// Refuses inputs that do not match the signature: count, dtype and every fixed dimension.
void CheckInputs(const std::vector<bridge_tensor_info>& specs,
                 const std::vector<std::string>& paths, const std::vector<HostTensor>& tensors) {
  if (specs.empty()) return;
  if (paths.size() != specs.size()) {
    Usage(std::to_string(paths.size()) + " input file(s) given, the model takes " +
          std::to_string(specs.size()) + ": " + Expected(specs));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::vector<int64_t>& got = tensors[i].shape;
    std::string dtype = DtypeName(tensors[i].dtype);
    bool same = got.size() == static_cast<size_t>(specs[i].ndim) && dtype == specs[i].dtype_name;
    for (size_t d = 0; same && d < got.size(); ++d) {
      same = specs[i].shape[d] < 0 || specs[i].shape[d] == got[d];
    }
    if (!same) {
      Usage(paths[i] + ": input " + specs[i].name + " expects " + specs[i].dtype_name + " " +
            ShapeText(specs[i].shape, specs[i].ndim) + ", got " + dtype + " " +
            ShapeText(got.data(), got.size()));
    }
  }
}

// ---- the command line ----

// The folder of this binary, with a trailing slash.
std::string ExeDir() {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe));
  if (n <= 0 || n == sizeof(exe)) return "./";
  std::string path(exe, n);
  return path.substr(0, path.rfind('/') + 1);
}

int ParseCount(const std::string& option, const char* text) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 0 || value > 1000000000) {
    Usage("bad value for " + option + ": " + text);
  }
  return static_cast<int>(value);
}

struct Args {
  std::string model = ExeDir() + "model.so", out_dir, profile, device = kDefaultDevice;
  int bench = 0, threads = 0;
  bool help = false;
  std::vector<std::string> inputs;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "-h" || arg == "--help") {
      a.help = true;
    } else if (arg == "--model" && has_value) {
      a.model = argv[++i];
    } else if (arg == "--out" && has_value) {
      a.out_dir = argv[++i];
    } else if (arg == "--profile" && has_value) {
      a.profile = argv[++i];
    } else if (arg == "--bench" && has_value) {
      a.bench = ParseCount(arg, argv[++i]);
    } else if (arg == "--device" && has_value) {
      a.device = argv[++i];
      if (a.device != "cpu" && a.device != "cuda") Usage("--device takes cpu or cuda");
    } else if (arg == "--threads" && has_value) {
      a.threads = ParseCount(arg, argv[++i]);
      if (a.threads < 1) Usage("--threads takes a count >= 1");
    } else if (arg.rfind("-", 0) == 0) {
      Usage("unknown option or missing value: " + arg);
    } else {
      a.inputs.push_back(arg);
    }
  }
  return a;
}

void WriteOutputs(const bridge_model* model, const std::string& dir) {
  int count = bridge_model_result_count(model);
  std::filesystem::create_directories(dir);
  for (int i = 0; i < count; ++i) {
    HostTensor host = ResultOnHost(model, i);
    WriteNpy(dir + "/output" + std::to_string(i) + ".npy", host.View());
  }
  std::printf("wrote %d output(s) to %s\n", count, dir.c_str());
}

void PrintOutputs(const bridge_model* model) {
  for (int i = 0; i < bridge_model_result_count(model); ++i) {
    DLTensor view;
    Check(bridge_model_result(model, i, &view));
    std::printf("output%d: %s %s\n", i, DtypeName(view.dtype).c_str(),
                ShapeText(view.shape, view.ndim).c_str());
  }
}

void Bench(bridge_model* model, std::vector<DLTensor>& views, int runs) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    auto start = std::chrono::steady_clock::now();
    Check(bridge_model_run(model, views.data(), static_cast<int>(views.size()), nullptr, 0));
    std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
    ms.push_back(elapsed.count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%d runs on %d thread(s): median %.3f ms, min %.3f ms\n", runs,
              bridge_model_threads(model), ms[ms.size() / 2], ms[0]);
}

int Run(int argc, char** argv) {
  Args args = Parse(argc, argv);
  if (args.help) {
    std::cout << kUsage;
    return 0;
  }
  bridge_model_options options{args.threads, args.device == "cuda" ? kDLCUDA : kDLCPU};
  std::unique_ptr<bridge_model, decltype(&bridge_model_free)> model(
      bridge_model_load(args.model.c_str(), &options), &bridge_model_free);
  if (!model) Fail(bridge_model_last_error());

  std::vector<bridge_tensor_info> specs = Inputs(model.get());
  if (args.inputs.empty()) {
    Usage(specs.empty() ? "no input files given"
                        : "no input files given; the model takes " + Expected(specs));
  }
  std::vector<HostTensor> tensors;
  for (const std::string& path : args.inputs) tensors.push_back(ReadNpy(path));
  CheckInputs(specs, args.inputs, tensors);
  std::vector<DLTensor> views;
  for (HostTensor& t : tensors) views.push_back(t.View());

  Check(bridge_model_run(model.get(), views.data(), static_cast<int>(views.size()), nullptr, 0));
  if (!args.out_dir.empty()) {
    WriteOutputs(model.get(), args.out_dir);
  } else {
    PrintOutputs(model.get());
    if (!args.bench && args.profile.empty()) {
      std::printf("(not written: pass --out DIR to save them as .npy)\n");
    }
  }
  if (args.bench > 0) Bench(model.get(), views, args.bench);
  if (!args.profile.empty()) {
    int runs = args.bench > 0 ? args.bench : kProfileRuns;
    Check(bridge_model_profile(model.get(), views.data(), static_cast<int>(views.size()), runs,
                               args.profile.c_str()));
    std::printf("wrote the profile of %d run(s) on %d thread(s) to %s\n", runs,
                bridge_model_threads(model.get()), args.profile.c_str());
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
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
