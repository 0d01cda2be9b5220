/* embed_example: an application that runs a bridge bundle's model through bridge_model.h.
 *
 *   embed_example MODEL.so [in0.npy ...] [--out DIR] [--threads N] [--from-memory]
 *                 [--profile FILE]
 *
 * Loads the model (from its path, or with --from-memory from bytes read into memory, as an
 * application that ships the model inside itself would), prints its inputs and outputs, runs
 * it on the .npy inputs (or, with none, on generated inputs: sin(i) for element i, symbolic
 * dimensions taken as 1) and prints the first values of each output; --out DIR writes
 * DIR/output0.npy, ...; --profile FILE writes bridge's raw per-kernel profile (10 runs) first.
 * Errors are the library's one-line messages (bridge_model_last_error), exit code 1.
 */
#include <bridge_model.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_TENSORS 16
#define MAX_DIMS 8

typedef struct {
  DLTensor t;
  int64_t shape[MAX_DIMS];
  void* data;
} Buffer;

static int fail(const char* what) {
  fprintf(stderr, "error: %s\n", what);
  return 1;
}

static size_t element_count(const Buffer* b) {
  size_t n = 1;
  for (int i = 0; i < b->t.ndim; ++i) n *= (size_t)b->shape[i];
  return n;
}

/* A 64-byte aligned buffer (the model then reads it in place, without a copy). */
static int allocate(Buffer* b, int ndim, const int64_t* shape, DLDataType dtype) {
  if (ndim > MAX_DIMS) return -1;
  memset(b, 0, sizeof(*b));
  for (int i = 0; i < ndim; ++i) b->shape[i] = shape[i] < 0 ? 1 : shape[i];
  b->t.ndim = ndim;
  b->t.shape = b->shape;
  b->t.dtype = dtype;
  b->t.device.device_type = kDLCPU;
  size_t bytes = element_count(b) * ((dtype.bits * dtype.lanes + 7) / 8);
  b->data = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  b->t.data = b->data;
  return b->data ? 0 : -1;
}

static void* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* bytes = malloc((size_t)n + 1);
  if (bytes && fread(bytes, 1, (size_t)n, f) != (size_t)n) {
    free(bytes);
    bytes = NULL;
  }
  fclose(f);
  if (bytes) bytes[n] = '\0', *size = (size_t)n;
  return bytes;
}

/* ---- .npy (version 1-3, little-endian, C order): float32, int32, int64, int8, uint8 ---- */

static const struct {
  const char* descr;
  DLDataType dtype;
} npy_types[] = {{"<f4", {kDLFloat, 32, 1}}, {"<i4", {kDLInt, 32, 1}},
                 {"<i8", {kDLInt, 64, 1}},   {"|i1", {kDLInt, 8, 1}},
                 {"|u1", {kDLUInt, 8, 1}}};

static int read_npy(const char* path, Buffer* b) {
  size_t size = 0;
  unsigned char* bytes = read_file(path, &size);
  if (!bytes || size < 10 || memcmp(bytes, "\x93NUMPY", 6) != 0) {
    free(bytes);
    return -1;
  }
  size_t header_len = bytes[6] == 1 ? (size_t)(bytes[8] | bytes[9] << 8)
                                    : (size_t)(bytes[8] | bytes[9] << 8 | bytes[10] << 16);
  size_t start = bytes[6] == 1 ? 10 : 12;
  char* header = (char*)bytes + start;
  int type = -1;
  for (int i = 0; i < (int)(sizeof(npy_types) / sizeof(npy_types[0])); ++i) {
    if (strstr(header, npy_types[i].descr)) type = i;
  }
  char* dims = strstr(header, "'shape': (");
  if (type < 0 || !dims || strstr(header, "'fortran_order': True")) {
    free(bytes);
    return -1;
  }
  int64_t shape[MAX_DIMS];
  int ndim = 0;
  for (char* p = dims + 10; *p != ')' && ndim < MAX_DIMS;) {
    char* end;
    long long d = strtoll(p, &end, 10);
    if (end == p) break;
    shape[ndim++] = d;
    p = end;
    while (*p == ',' || *p == ' ') ++p;
  }
  int rc = allocate(b, ndim, shape, npy_types[type].dtype);
  size_t want = element_count(b) * (npy_types[type].dtype.bits / 8);
  if (rc == 0 && start + header_len + want <= size) {
    memcpy(b->data, bytes + start + header_len, want);
  } else {
    rc = -1;
  }
  free(bytes);
  return rc;
}

static int write_npy(const char* path, const DLTensor* t) {
  const char* descr = NULL;
  for (int i = 0; i < (int)(sizeof(npy_types) / sizeof(npy_types[0])); ++i) {
    if (npy_types[i].dtype.code == t->dtype.code && npy_types[i].dtype.bits == t->dtype.bits) {
      descr = npy_types[i].descr;
    }
  }
  if (!descr) return -1;
  char shape[256] = "", header[512];
  size_t count = 1;
  for (int i = 0; i < t->ndim; ++i) {
    size_t used = strlen(shape);
    snprintf(shape + used, sizeof(shape) - used, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    count *= (size_t)t->shape[i];
  }
  if (t->ndim == 1) strcat(shape, ",");
  int n = snprintf(header, sizeof(header),
                   "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape);
  while ((10 + n + 1) % 64) header[n++] = ' ';
  header[n++] = '\n';
  FILE* f = fopen(path, "wb");
  if (!f) return -1;
  unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xff),
                                (unsigned char)(n >> 8)};
  size_t bytes = count * (t->dtype.bits / 8);
  int ok = fwrite(preamble, 1, 10, f) == 10 && fwrite(header, 1, (size_t)n, f) == (size_t)n &&
           fwrite((char*)t->data + t->byte_offset, 1, bytes, f) == bytes;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* ---- the application ---- */

static void print_info(const char* kind, const bridge_tensor_info* info) {
  printf("%s %s %s (", kind, info->name, info->dtype_name);
  for (int d = 0; d < info->ndim; ++d) {
    if (info->shape[d] < 0) {
      printf("%s?", d ? ", " : "");
    } else {
      printf("%s%lld", d ? ", " : "", (long long)info->shape[d]);
    }
  }
  printf("%s)\n", info->ndim == 1 ? "," : "");
}

static void generate(Buffer* b) {
  size_t n = element_count(b);
  for (size_t i = 0; i < n; ++i) {
    double v = sin((double)i);
    switch (b->t.dtype.code * 100 + b->t.dtype.bits) {
      case kDLFloat * 100 + 32: ((float*)b->data)[i] = (float)v; break;
      case kDLInt * 100 + 32: ((int32_t*)b->data)[i] = (int32_t)(i % 7); break;
      case kDLInt * 100 + 64: ((int64_t*)b->data)[i] = (int64_t)(i % 7); break;
      case kDLInt * 100 + 8: ((int8_t*)b->data)[i] = (int8_t)(v * 100); break;
      default: ((uint8_t*)b->data)[i] = (uint8_t)(i % 251); break;
    }
  }
}

static void print_values(int index, const DLTensor* t) {
  size_t count = 1;
  for (int d = 0; d < t->ndim; ++d) count *= (size_t)t->shape[d];
  printf("output%d:", index);
  for (size_t i = 0; i < count && i < 6; ++i) {
    if (t->dtype.code == kDLFloat && t->dtype.bits == 32) {
      printf(" %.6g", ((const float*)t->data)[i]);
    } else if (t->dtype.code == kDLInt && t->dtype.bits == 32) {
      printf(" %d", ((const int32_t*)t->data)[i]);
    }
  }
  printf("%s\n", count > 6 ? " ..." : "");
}

static bridge_model* load(const char* path, int from_memory, const bridge_model_options* opts) {
  if (!from_memory) return bridge_model_load(path, opts);
  /* model.so, model.params (if any) and model.signature, as bytes in memory. */
  char other[4096];
  size_t stem = strrchr(path, '.') ? (size_t)(strrchr(path, '.') - path) : strlen(path);
  size_t lib_size = 0, params_size = 0, sig_size = 0;
  void* lib = read_file(path, &lib_size);
  snprintf(other, sizeof(other), "%.*s.params", (int)stem, path);
  void* params = read_file(other, &params_size);
  snprintf(other, sizeof(other), "%.*s.signature", (int)stem, path);
  char* signature = read_file(other, &sig_size);
  bridge_model* model =
      lib ? bridge_model_load_from_memory(lib, lib_size, params, params_size, signature, opts)
          : NULL;
  if (!lib) fprintf(stderr, "error: cannot read %s\n", path);
  free(lib);
  free(params);
  free(signature);
  return model;
}

int main(int argc, char** argv) {
  const char *model_path = NULL, *out_dir = NULL, *profile = NULL, *inputs[MAX_TENSORS];
  int num_files = 0, from_memory = 0, threads = -1;
  bridge_model_options options = {0, 0}; /* defaults: every usable core, the bundle's device */
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc) {
      out_dir = argv[++i];
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--profile") && i + 1 < argc) {
      profile = argv[++i];
    } else if (!strcmp(argv[i], "--from-memory")) {
      from_memory = 1;
    } else if (!model_path) {
      model_path = argv[i];
    } else if (num_files < MAX_TENSORS) {
      inputs[num_files++] = argv[i];
    }
  }
  if (!model_path) return fail("usage: embed_example MODEL.so [in0.npy ...] [--out DIR]");
  if (bridge_model_api_version() != BRIDGE_MODEL_API_VERSION) {
    return fail("libbridge_model.so is another version than bridge_model.h");
  }

  bridge_model* model = load(model_path, from_memory, &options);
  if (!model) return fail(bridge_model_last_error());
  if (threads >= 0 && bridge_model_set_threads(model, threads) != 0) {
    return fail(bridge_model_last_error());
  }
  int n_in = bridge_model_num_inputs(model), n_out = bridge_model_num_outputs(model);
  printf("%s: %d input(s), %d output(s), %d thread(s)%s\n", model_path, n_in, n_out,
         bridge_model_threads(model), from_memory ? ", loaded from memory" : "");
  bridge_tensor_info info;
  for (int i = 0; i < n_in && bridge_model_input_info(model, i, &info) == 0; ++i) {
    print_info("input", &info);
  }
  for (int i = 0; i < n_out && bridge_model_output_info(model, i, &info) == 0; ++i) {
    print_info("output", &info);
  }

  /* Inputs: the .npy files given, or generated ones shaped like the model's inputs. */
  Buffer in[MAX_TENSORS];
  DLTensor in_views[MAX_TENSORS];
  int count = num_files ? num_files : n_in;
  if (count > MAX_TENSORS) return fail("too many inputs for this example");
  for (int i = 0; i < count; ++i) {
    if (num_files) {
      if (read_npy(inputs[i], &in[i]) != 0) return fail("cannot read an input .npy file");
    } else {
      bridge_model_input_info(model, i, &info);
      if (allocate(&in[i], info.ndim, info.shape, info.dtype) != 0) return fail("out of memory");
      generate(&in[i]);
    }
    in_views[i] = in[i].t;
  }

  if (profile) {
    if (bridge_model_profile(model, in_views, count, 10, profile) != 0) {
      return fail(bridge_model_last_error());
    }
    printf("wrote the profile to %s\n", profile);
  }

  /* Outputs into buffers this application owns, when their shapes are known up front. */
  int fixed = n_out > 0 && n_out <= MAX_TENSORS;
  for (int i = 0; fixed && i < n_out; ++i) {
    bridge_model_output_info(model, i, &info);
    for (int d = 0; d < info.ndim; ++d) fixed = fixed && info.shape[d] >= 0;
  }
  Buffer out[MAX_TENSORS];
  DLTensor out_views[MAX_TENSORS];
  for (int i = 0; fixed && i < n_out; ++i) {
    bridge_model_output_info(model, i, &info);
    if (allocate(&out[i], info.ndim, info.shape, info.dtype) != 0) return fail("out of memory");
    out_views[i] = out[i].t;
  }
  if (bridge_model_run(model, in_views, count, fixed ? out_views : NULL, fixed ? n_out : 0) != 0) {
    return fail(bridge_model_last_error());
  }
  if (out_dir) mkdir(out_dir, 0777); /* (an existing folder is fine) */
  /* Otherwise (symbolic output shapes): views of the model's own result memory, no copy. */
  int results = bridge_model_result_count(model);
  for (int i = 0; i < results; ++i) {
    DLTensor view;
    Buffer host;
    if (fixed) {
      view = out_views[i];
    } else if (bridge_model_result(model, i, &view) != 0) {
      return fail(bridge_model_last_error());
    } else if (view.device.device_type != kDLCPU) {  /* a CUDA model's result: to the host */
      if (allocate(&host, view.ndim, view.shape, view.dtype) != 0 ||
          bridge_model_copy_result(model, i, &host.t) != 0) {
        return fail(bridge_model_last_error());
      }
      view = host.t; /* (this example does not free it) */
    }
    print_values(i, &view);
    if (out_dir) {
      char path[4096];
      snprintf(path, sizeof(path), "%s/output%d.npy", out_dir, i);
      if (write_npy(path, &view) != 0) return fail("cannot write an output .npy file");
    }
  }
  if (out_dir) printf("wrote %d output(s) to %s\n", results, out_dir);

  for (int i = 0; i < count; ++i) free(in[i].data);
  for (int i = 0; fixed && i < n_out; ++i) free(out[i].data);
  bridge_model_free(model);
  return 0;
}
