/* bridge_model.h - run a bridge-compiled model from C, C++, Rust, Go, ... (plain C ABI).
 *
 * Every bridge bundle carries this header (include/bridge_model.h, with include/dlpack/dlpack.h)
 * and its library (libbridge_model.so, beside libtvm_runtime.so and libtvm_ffi.so, which it
 * loads). Link with -lbridge_model and an rpath to the bundle folder; see examples/embed/.
 *
 *   bridge_model* m = bridge_model_load("bundle/model.so", NULL);
 *   if (!m) { fprintf(stderr, "%s\n", bridge_model_last_error()); return 1; }
 *   bridge_tensor_info in;
 *   bridge_model_input_info(m, 0, &in);          // name, shape (-1: any size), dtype
 *   DLTensor x = {data, {kDLCPU, 0}, in.ndim, in.dtype, shape, NULL, 0};
 *   DLTensor y = {out, {kDLCPU, 0}, ...};         // shaped like bridge_model_output_info's
 *   if (bridge_model_run(m, &x, 1, &y, 1) != 0) ... bridge_model_last_error() ...
 *   bridge_model_free(m);
 *
 * Conventions: functions returning int return 0 on success and -1 on failure; functions
 * returning a pointer return NULL on failure. After a failure bridge_model_last_error() says
 * why, in one line (per thread: each thread sees its own last error). Nothing here aborts or
 * throws across the ABI. A model may be used from one thread at a time; distinct models may
 * run concurrently, but CPU kernels share TVM's one thread pool (see bridge_model_set_threads).
 *
 * Buffers: inputs are read in place (no copy) when they are C-contiguous, on the model's
 * device, and 64-byte aligned (TVM's kernels assume that alignment); otherwise they are copied
 * once into an aligned staging buffer the model keeps. The model computes its outputs in its
 * own (planned, reused) memory; bridge_model_run copies them once into the caller's output
 * buffers, or bridge_model_result() hands out a view of them without a copy.
 */
#ifndef BRIDGE_MODEL_H_
#define BRIDGE_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

/* Bumped on any incompatible change of this header; compare with bridge_model_api_version(). */
#define BRIDGE_MODEL_API_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BRIDGE_MODEL_API __attribute__((visibility("default")))
#else
#define BRIDGE_MODEL_API
#endif

/* A loaded model (opaque). */
typedef struct bridge_model bridge_model;

/* One input or output. Pointers are owned by the model and live as long as it does. */
typedef struct bridge_tensor_info {
  const char* name;       /* the Keras/TFLite name (whitespace removed) */
  int32_t ndim;
  const int64_t* shape;   /* ndim sizes; -1 for a symbolic dimension (e.g. a dynamic batch) */
  DLDataType dtype;       /* e.g. {kDLFloat, 32, 1} */
  const char* dtype_name; /* e.g. "float32", "int8" */
} bridge_tensor_info;

/* Load options; pass NULL for the defaults (all fields 0). */
typedef struct bridge_model_options {
  /* CPU kernel threads; 0: the cores this process may use (its affinity mask, so taskset and
   * container CPU sets count), or TVM_NUM_THREADS when that is set. */
  int32_t num_threads;
  /* DLDeviceType to run on; 0: the bundle's device (kDLCUDA for CUDA bundles, else kDLCPU). */
  int32_t device_type;
} bridge_model_options;

/* BRIDGE_MODEL_API_VERSION of the library actually loaded. */
BRIDGE_MODEL_API int bridge_model_api_version(void);

/* Why the last failing call on this thread failed ("" if none has). Valid until this thread's
 * next failing call. */
BRIDGE_MODEL_API const char* bridge_model_last_error(void);

/* Load the model library at `path` (e.g. "bundle/model.so"), with its weights from the .params
 * file beside it when there is one ("model.params") and its inputs/outputs from the .signature
 * file beside it ("model.signature"; bundles write one), else from its metadata sidecar
 * ("model.meta.json", written beside every exported library). While loading, the process's stderr (fd 2) is pointed at
 * /dev/null: TVM logs a line per function as it loads an executable. */
BRIDGE_MODEL_API bridge_model* bridge_model_load(const char* path,
                                                 const bridge_model_options* options);

/* Load a model from memory: `library` holds the bytes of model.so (it is written to an
 * anonymous in-memory file, memfd_create, or where that or /proc is missing to a temporary file
 * in $TMPDIR or /tmp that is removed once loaded, and dlopen'ed from there); `params` the bytes of
 * model.params or NULL; `signature` the text of model.signature or NULL (then the model
 * reports no inputs/outputs and its inputs are not checked). The caller keeps ownership of all
 * three and may free them when this returns. */
BRIDGE_MODEL_API bridge_model* bridge_model_load_from_memory(const void* library,
                                                             size_t library_size,
                                                             const void* params,
                                                             size_t params_size,
                                                             const char* signature,
                                                             const bridge_model_options* options);

/* Release a model (NULL is allowed). */
BRIDGE_MODEL_API void bridge_model_free(bridge_model* model);

/* Inputs and outputs in model order. The counts are -1 on a NULL model. */
BRIDGE_MODEL_API int bridge_model_num_inputs(const bridge_model* model);
BRIDGE_MODEL_API int bridge_model_num_outputs(const bridge_model* model);
BRIDGE_MODEL_API int bridge_model_input_info(const bridge_model* model, int index,
                                             bridge_tensor_info* info);
BRIDGE_MODEL_API int bridge_model_output_info(const bridge_model* model, int index,
                                              bridge_tensor_info* info);

/* CPU kernel threads for this model's runs (applied before each run; TVM has one pool per
 * process, sized when it starts, so at most the pool's size). */
BRIDGE_MODEL_API int bridge_model_set_threads(bridge_model* model, int num_threads);
/* Threads this model's runs use. */
BRIDGE_MODEL_API int bridge_model_threads(const bridge_model* model);
/* The device the model runs on (kDLCPU or kDLCUDA, device 0). */
BRIDGE_MODEL_API DLDevice bridge_model_device(const bridge_model* model);

/* Run the model on `inputs` (num_inputs tensors in input order, each matching its input's dtype
 * and fixed dimensions). When `outputs` is not NULL, result i is copied into outputs[i] (on the
 * CPU or the model's device; shape and dtype must match the result's: with symbolic dimensions
 * use bridge_model_result for the shape). Returns when the results are complete. */
BRIDGE_MODEL_API int bridge_model_run(bridge_model* model, const DLTensor* inputs, int num_inputs,
                                      DLTensor* outputs, int num_outputs);

/* Tensors the last run returned (a tuple result counts its tensors depth-first); -1 before
 * the first run. */
BRIDGE_MODEL_API int bridge_model_result_count(const bridge_model* model);
/* A view of result `index` of the last run, without a copy: data, shape and strides stay
 * owned by the model and valid until its next run or free. On a CUDA model the data is on the
 * GPU. */
BRIDGE_MODEL_API int bridge_model_result(const bridge_model* model, int index, DLTensor* view);
/* Copy result `index` of the last run into `out` (CPU or the model's device). */
BRIDGE_MODEL_API int bridge_model_copy_result(const bridge_model* model, int index,
                                              DLTensor* out);

/* Time every call the model's VM makes (its compiled kernels and vm.builtin.* functions) over
 * `runs` runs on `inputs` after one warm-up run, and write the median wall time of each in
 * microseconds to `json_path` as bridge's raw profile:
 *   {"format": "bridge-profile-raw", "version": 1, "source": "runner", "device": "cpu",
 *    "threads": 2, "runs": 10, "calls": [{"name": "fused_conv2d_add_relu", "us": 12.5}, ...]}
 * (render it with `bridge profile --from out.json MODEL`). On CUDA each call is timed up to the
 * end of its GPU work (the stream is synchronized after every call). */
BRIDGE_MODEL_API int bridge_model_profile(bridge_model* model, const DLTensor* inputs,
                                          int num_inputs, int runs, const char* json_path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BRIDGE_MODEL_H_ */
