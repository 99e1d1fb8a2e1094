package runner

// This file holds only the callback llama.cpp calls (a file with //export
// may declare C, not define it); llamalog.go installs it.

/*
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

//export inferLlamaLog
func inferLlamaLog(level C.int, text *C.char, user unsafe.Pointer) {
	if s, ok := cgo.Handle(uintptr(user)).Value().(*llamaLogSink); ok {
		s.write(int(level), C.GoString(text))
	}
}
