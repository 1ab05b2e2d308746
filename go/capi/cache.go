package main

/*
#include <stdlib.h>
#include "model_streamer.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unsafe"

	"github.com/model-streamer/model-streamer/go/cache"
	"github.com/model-streamer/model-streamer/go/stream"
)

// opener is what a stream reads through: the registry, behind the local
// cache when MODEL_STREAMER_CACHE_DIR is set (read-only for header reads,
// which read too little of an object to write an entry).
func (r request) opener(readOnly bool) (stream.Opener, error) {
	o, err := cache.FromSettings(r.registry(), r.settings, readOnly, nil)
	if err != nil {
		return nil, invalidRequest(err)
	}
	return o.(stream.Opener), nil
}

// configured parses a call's ms_config and makes the opener it reads
// through (see opener).
func configured(config *cConfig, readOnly bool) (request, stream.Opener, error) {
	req, err := parseConfig(config)
	if err != nil {
		return req, nil, err
	}
	o, err := req.opener(readOnly)
	return req, o, err
}

//export msgo_cache
func msgo_cache(op, dir *C.char, maxBytes C.int64_t, out **C.char, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if op == nil || dir == nil || out == nil {
		setErr(errBuf, errLen, "ms_cache: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	*out = nil
	result, err := manageCache(C.GoString(op), C.GoString(dir), int64(maxBytes))
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	b, err := json.Marshal(result)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*out = C.CString(string(b))
	return C.MS_OK
}

//export msgo_cache_wait
func msgo_cache_wait(timeoutMs C.int32_t) (rc C.int) {
	defer guard(&rc, nil, 0)
	ctx := context.Background()
	if timeoutMs >= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(timeoutMs)*time.Millisecond)
		defer cancel()
	}
	if cache.Wait(ctx) != nil {
		return C.MS_ERR_TIMEOUT
	}
	return C.MS_OK
}

//export msgo_cache_contribute
func msgo_cache_contribute(uri *C.char, offset C.int64_t, data unsafe.Pointer, n C.int64_t) (rc C.int) {
	defer guard(&rc, nil, 0)
	if uri == nil || (data == nil && n > 0) || n < 0 || offset < 0 {
		return C.MS_ERR_INVALID_ARGUMENT
	}
	if n == 0 {
		// A query: would bytes of uri be taken?
		if cache.Writing(C.GoString(uri)) {
			return 1
		}
		return 0
	}
	if cache.Contribute(C.GoString(uri), int64(offset), unsafe.Slice((*byte)(data), int(n))) {
		return 1
	}
	return 0
}

// cacheUsage is the answer to "du".
type cacheUsage struct {
	Dir      string `json:"dir"`
	Bytes    int64  `json:"bytes"`
	MaxBytes int64  `json:"max_bytes"`
	Entries  int    `json:"entries"`
}

func manageCache(op, dir string, maxBytes int64) (any, error) {
	c, err := cache.Open(dir, maxBytes)
	if err != nil {
		return nil, invalidRequest(err)
	}
	switch op {
	case "ls":
		l, err := c.List()
		if l == nil {
			l = []cache.Entry{}
		}
		return map[string]any{"dir": c.Dir(), "entries": l}, err
	case "du":
		l, err := c.List()
		return cacheUsage{Dir: c.Dir(), Bytes: c.Usage(), MaxBytes: c.MaxBytes(), Entries: len(l)}, err
	case "prune":
		return c.Prune()
	case "clear":
		return c.Clear()
	}
	return nil, fmt.Errorf("%w: ms_cache: unknown operation %q (ls, du, prune, clear)", stream.ErrInvalidRequest, op)
}
