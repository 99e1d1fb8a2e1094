package runner

// The llama package of github.com/ollama/ollama v0.11.4 does not say which
// ggml devices it loaded (the CPU, a CUDA GPU from a `make build-cuda`
// backend). The ggml device registry is in the binary already (that module
// compiles ggml); these declarations reach it without its headers, as
// llamaext.go does for contexts. The enum values are ggml-backend.h's.

/*
#include <stddef.h>
typedef struct ggml_backend_device * ggml_backend_dev_t;
size_t             ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
const char *       ggml_backend_dev_name(ggml_backend_dev_t device);
const char *       ggml_backend_dev_description(ggml_backend_dev_t device);
void               ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
int                ggml_backend_dev_type(ggml_backend_dev_t device);
*/
import "C"

import (
	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/wire"
)

// deviceKinds are enum ggml_backend_dev_type's values, in order.
var deviceKinds = [...]string{"cpu", "gpu", "accel"}

// Devices returns the ggml devices this process can compute on, loading
// the backends first (the CPU's, and the GPU backends found beside the
// binary or in OLLAMA_LIBRARY_PATH). Memory is as the backend reports it
// now: for the CPU, the host's total and available memory.
func Devices() []wire.Device {
	llama.BackendInit()
	n := int(C.ggml_backend_dev_count())
	out := make([]wire.Device, 0, n)
	for i := range n {
		d := C.ggml_backend_dev_get(C.size_t(i))
		if d == nil {
			continue
		}
		var free, total C.size_t
		C.ggml_backend_dev_memory(d, &free, &total)
		kind := "unknown"
		if t := int(C.ggml_backend_dev_type(d)); t >= 0 && t < len(deviceKinds) {
			kind = deviceKinds[t]
		}
		out = append(out, wire.Device{
			Name:        C.GoString(C.ggml_backend_dev_name(d)),
			Description: C.GoString(C.ggml_backend_dev_description(d)),
			Kind:        kind,
			TotalBytes:  int64(total),
			FreeBytes:   int64(free),
		})
	}
	return out
}

// GPUFreeBytes is the free memory of the GPUs among devs, summed (llama.cpp
// splits offloaded layers over every GPU it sees), and how many there are.
func GPUFreeBytes(devs []wire.Device) (free int64, gpus int) {
	for _, d := range devs {
		if d.Kind == "gpu" {
			free += d.FreeBytes
			gpus++
		}
	}
	return free, gpus
}

// GPULayers is how many layers the engine offloaded to the GPUs.
func (e *Engine) GPULayers() int { return e.cfg.GPULayers }

// Devices are the devices the engine was placed on.
func (e *Engine) Devices() []wire.Device { return e.cfg.Devices }
