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
	"unsafe"

	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/stream"
)

// Checksum sidecars: computing them (ms_stream_open_checksum,
// ms_stream_checksums) and writing them beside their files (ms_put).

func (l *lazyBackend) Put(ctx context.Context, uri string, data []byte) error {
	b, err := l.get()
	if err != nil {
		return named(uri, err)
	}
	p, ok := b.(storage.Putter)
	if !ok {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: fmt.Errorf("backend cannot write")}
	}
	return p.Put(ctx, uri, data)
}

//export msgo_stream_open_checksum
func msgo_stream_open_checksum(uris **C.char, nURIs C.int32_t, config *cConfig, handle *C.int64_t,
	errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if handle == nil || (uris == nil && nURIs > 0) || nURIs < 0 {
		setErr(errBuf, errLen, "ms_stream_open_checksum: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	req, err := parseConfig(config)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	cfg := req.streamConfig(req.registry())
	s, err := stream.OpenChecksum(context.Background(), cfg, cStrings(uris, nURIs))
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*handle = C.int64_t(register(s))
	return C.MS_OK
}

//export msgo_stream_checksums
func msgo_stream_checksums(h C.int64_t, out **C.char, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if out == nil {
		setErr(errBuf, errLen, "ms_stream_checksums: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	e := lookup(h)
	if e == nil {
		setErr(errBuf, errLen, "ms_stream_checksums: unknown handle")
		return C.MS_ERR_BAD_HANDLE
	}
	docs, err := e.s.Sidecars()
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	type file struct {
		URI     string             `json:"uri"`
		Sidecar string             `json:"sidecar"`
		Doc     *integrity.Sidecar `json:"checksums"`
	}
	var body struct {
		Files []file `json:"files"`
	}
	for i, f := range e.s.Files() {
		body.Files = append(body.Files, file{URI: f.URI, Sidecar: integrity.SidecarName(f.URI), Doc: docs[i]})
	}
	b, err := json.Marshal(body)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*out = C.CString(string(b))
	return C.MS_OK
}

//export msgo_put
func msgo_put(uri *C.char, data unsafe.Pointer, n C.uint64_t, config *cConfig, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if uri == nil || (data == nil && n > 0) {
		setErr(errBuf, errLen, "ms_put: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	req, err := parseConfig(config)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	// Copied: the caller's buffer is only borrowed for the call.
	var buf []byte
	if n > 0 {
		buf = C.GoBytes(data, C.int(n))
	}
	if err := req.registry().Put(context.Background(), C.GoString(uri), buf); err != nil {
		return fail(errBuf, errLen, err)
	}
	return C.MS_OK
}
