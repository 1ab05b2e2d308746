// Command capi is the C ABI of the streamer, built with -buildmode=c-shared.
// model_streamer.h is the contract; shim.c holds the public symbols and
// forwards to the exports here, which check arguments, resolve handles,
// call the Go API and map errors to codes. No panic crosses the boundary.
package main

/*
#include <stdlib.h>
#include "model_streamer.h"
*/
import "C"

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unsafe"

	"github.com/model-streamer/model-streamer/go/fetch"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/safetensors"
	"github.com/model-streamer/model-streamer/go/storage"
	httpstore "github.com/model-streamer/model-streamer/go/storage/http"
	"github.com/model-streamer/model-streamer/go/stream"
)

func main() {}

type cConfig = C.ms_config

type entry struct {
	s        *stream.Stream
	metaOnce sync.Once
	meta     []byte
}

var (
	handlesMu  sync.Mutex
	handles    = map[int64]*entry{}
	lastHandle int64
)

func lookup(h C.int64_t) *entry {
	handlesMu.Lock()
	defer handlesMu.Unlock()
	return handles[int64(h)]
}

// setErr copies msg into the caller's buffer, truncated and NUL-terminated.
func setErr(buf *C.char, n C.size_t, msg string) {
	if buf == nil || n == 0 {
		return
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
	k := copy(dst[:len(dst)-1], msg)
	dst[k] = 0
}

// code maps an error to the ABI's closed set of codes.
func code(err error) C.int {
	var mle *stream.MemoryLimitError
	switch {
	case err == nil:
		return C.MS_OK
	case errors.Is(err, io.EOF):
		return C.MS_ERR_END
	case errors.Is(err, stream.ErrClosed):
		return C.MS_ERR_CLOSED
	case errors.As(err, &mle):
		return C.MS_ERR_MEMORY_LIMIT
	case errors.Is(err, integrity.ErrChecksum):
		return C.MS_ERR_CHECKSUM
	case errors.Is(err, safetensors.ErrInvalid), errors.Is(err, stream.ErrInvalidRequest):
		return C.MS_ERR_INVALID_ARGUMENT
	}
	switch storage.CodeOf(err) {
	case storage.NotFound:
		return C.MS_ERR_NOT_FOUND
	case storage.PermissionDenied:
		return C.MS_ERR_PERMISSION_DENIED
	case storage.InvalidArgument:
		return C.MS_ERR_INVALID_ARGUMENT
	case storage.Canceled:
		return C.MS_ERR_CANCELED
	}
	return C.MS_ERR_IO
}

func fail(errBuf *C.char, errLen C.size_t, err error) C.int {
	// The engine names files as the caller gave them: an http(s) URL's
	// query (a presigned signature) must not reach the message.
	setErr(errBuf, errLen, httpstore.RedactText(err.Error()))
	return code(err)
}

// guard turns a panic into MS_ERR_INTERNAL with its message.
func guard(rc *C.int, errBuf *C.char, errLen C.size_t) {
	if p := recover(); p != nil {
		setErr(errBuf, errLen, fmt.Sprintf("internal error: %v", p))
		*rc = C.MS_ERR_INTERNAL
	}
}

func cStrings(p **C.char, n C.int32_t) []string {
	if n < 0 {
		return nil
	}
	out := make([]string, int(n))
	if n == 0 {
		return out
	}
	for i, s := range unsafe.Slice(p, int(n)) {
		out[i] = C.GoString(s)
	}
	return out
}

//export msgo_stream_open
func msgo_stream_open(uris **C.char, nURIs C.int32_t, names **C.char, nNames C.int32_t,
	config *cConfig, handle *C.int64_t, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if handle == nil || (uris == nil && nURIs > 0) || nURIs < 0 || (names == nil && nNames > 0) {
		setErr(errBuf, errLen, "ms_stream_open: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	req, opener, err := configured(config, false)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	cfg := req.streamConfig(opener)
	s, err := stream.Open(context.Background(), cfg, cStrings(uris, nURIs), cStrings(names, nNames))
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	handlesMu.Lock()
	lastHandle++
	h := lastHandle
	handles[h] = &entry{s: s}
	handlesMu.Unlock()
	*handle = C.int64_t(h)
	return C.MS_OK
}

//export msgo_stream_open_ranges
func msgo_stream_open_ranges(uris **C.char, nURIs C.int32_t, nRanges *C.int32_t, offsets, sizes *C.int64_t,
	config *cConfig, handle *C.int64_t, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if handle == nil || nURIs < 0 || (nURIs > 0 && (uris == nil || nRanges == nil)) {
		setErr(errBuf, errLen, "ms_stream_open_ranges: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	paths := cStrings(uris, nURIs)
	var counts []C.int32_t
	if nURIs > 0 {
		counts = unsafe.Slice(nRanges, int(nURIs))
	}
	var total int64
	for i, n := range counts {
		if n < 0 {
			return fail(errBuf, errLen, fmt.Errorf("%w: %s: a negative number of ranges (%d)", stream.ErrInvalidRequest, paths[i], n))
		}
		total += int64(n)
	}
	if total > 0 && (offsets == nil || sizes == nil) {
		setErr(errBuf, errLen, "ms_stream_open_ranges: invalid arguments (no offsets or sizes)")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	// Copied into Go memory: the caller's arrays are only borrowed for the call.
	var offs, lens []C.int64_t
	if total > 0 {
		offs, lens = unsafe.Slice(offsets, total), unsafe.Slice(sizes, total)
	}
	reqs := make([]stream.RangeRequest, len(paths))
	next := 0
	for i, n := range counts {
		r := stream.RangeRequest{URI: paths[i], Offsets: make([]int64, n), Sizes: make([]int64, n)}
		for j := range int(n) {
			r.Offsets[j], r.Sizes[j] = int64(offs[next]), int64(lens[next])
			next++
		}
		reqs[i] = r
	}
	req, opener, err := configured(config, false)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	cfg := req.streamConfig(opener)
	s, err := stream.OpenRanges(context.Background(), cfg, reqs)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*handle = C.int64_t(register(s))
	return C.MS_OK
}

// register gives s a handle.
func register(s *stream.Stream) int64 {
	handlesMu.Lock()
	defer handlesMu.Unlock()
	lastHandle++
	handles[lastHandle] = &entry{s: s}
	return lastHandle
}

type tensorJSON struct {
	Name    string   `json:"name"`
	DType   string   `json:"dtype"`
	Shape   []int64  `json:"shape"`
	Offsets [2]int64 `json:"offsets"`
}

type fileJSON struct {
	URI        string       `json:"uri"`
	DataOffset int64        `json:"data_offset"`
	Size       int64        `json:"size"`
	Strategy   string       `json:"strategy"`
	Tensors    []tensorJSON `json:"tensors"`
	Verify     *verifyJSON  `json:"verify,omitempty"`
}

// verifyJSON says whether the file is checked against its store's checksum.
type verifyJSON struct {
	Algorithm string `json:"algorithm,omitempty"`
	Source    string `json:"source,omitempty"`
	Expected  string `json:"expected,omitempty"`
	Skipped   string `json:"skipped,omitempty"`

	Sidecar          string `json:"sidecar,omitempty"`
	SidecarAlgorithm string `json:"sidecar_algorithm,omitempty"`
	SidecarEntries   int    `json:"sidecar_entries,omitempty"`
	SidecarUncovered int    `json:"sidecar_uncovered,omitempty"`
}

func metadataJSON(s *stream.Stream) []byte { return filesJSON(s.Files()) }

func filesJSON(files []stream.FileInfo) []byte {
	tensors := 0
	for _, f := range files {
		tensors += len(f.Tensors)
	}
	return appendFiles(make([]byte, 0, 256*len(files)+128*tensors), fileDocs(files))
}

// fileDocs is what ms_stream_metadata says of each file (as JSON: appendFiles).
func fileDocs(files []stream.FileInfo) []fileJSON {
	var docs []fileJSON
	for _, f := range files {
		fj := fileJSON{URI: f.URI, Size: f.Size, Strategy: f.Strategy, Tensors: make([]tensorJSON, len(f.Tensors))}
		if f.Header != nil { // nil for byte ranges (ms_stream_open_ranges): offsets are absolute
			fj.DataOffset = f.Header.DataOffset
		}
		if v := f.Verify; v != (stream.Verification{}) {
			fj.Verify = &verifyJSON{Algorithm: string(v.Algorithm), Source: v.Source, Expected: v.Expected, Skipped: v.Skipped,
				Sidecar: v.Sidecar, SidecarAlgorithm: string(v.SidecarAlgorithm), SidecarEntries: v.SidecarEntries,
				SidecarUncovered: v.SidecarUncovered}
		}
		for i, t := range f.Tensors {
			shape := t.Shape
			if shape == nil {
				shape = []int64{}
			}
			fj.Tensors[i] = tensorJSON{Name: t.Name, DType: string(t.DType), Shape: shape, Offsets: [2]int64{t.Begin, t.End}}
		}
		docs = append(docs, fj)
	}
	return docs
}

//export msgo_stream_metadata
func msgo_stream_metadata(h C.int64_t, buf *C.char, bufLen C.size_t, needed *C.size_t,
	errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	e := lookup(h)
	if e == nil {
		setErr(errBuf, errLen, fmt.Sprintf("unknown stream handle %d", h))
		return C.MS_ERR_BAD_HANDLE
	}
	e.metaOnce.Do(func() { e.meta = metadataJSON(e.s) })
	if needed != nil {
		*needed = C.size_t(len(e.meta) + 1)
	}
	if buf == nil || int(bufLen) < len(e.meta)+1 {
		setErr(errBuf, errLen, fmt.Sprintf("metadata needs a buffer of %d bytes", len(e.meta)+1))
		return C.MS_ERR_INVALID_ARGUMENT
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(bufLen))
	copy(dst, e.meta)
	dst[len(e.meta)] = 0
	return C.MS_OK
}

//export msgo_stream_next
func msgo_stream_next(h C.int64_t, out *C.ms_tensor, max C.int32_t, n *C.int32_t, timeoutMs C.int32_t,
	errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if out == nil || n == nil || max <= 0 {
		setErr(errBuf, errLen, "ms_stream_next: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	*n = 0
	e := lookup(h)
	if e == nil {
		setErr(errBuf, errLen, fmt.Sprintf("unknown stream handle %d", h))
		return C.MS_ERR_BAD_HANDLE
	}
	timeout := time.Duration(timeoutMs) * time.Millisecond
	if timeoutMs < 0 {
		timeout = -1
	}
	batch, err := e.s.Next(context.Background(), int(max), timeout)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	if len(batch) == 0 {
		return C.MS_ERR_TIMEOUT
	}
	dst := unsafe.Slice(out, int(max))
	for i, r := range batch {
		var data unsafe.Pointer
		if len(r.Data) > 0 {
			data = unsafe.Pointer(unsafe.SliceData(r.Data))
		}
		dst[i] = C.ms_tensor{
			file_index:   C.int32_t(r.File),
			tensor_index: C.int32_t(r.Tensor),
			data:         data,
			nbytes:       C.uint64_t(len(r.Data)),
			token:        C.uint64_t(r.Token),
		}
	}
	*n = C.int32_t(len(batch))
	return C.MS_OK
}

//export msgo_release
func msgo_release(token C.uint64_t) (rc C.int) {
	defer guard(&rc, nil, 0)
	stream.Release(stream.Token(token))
	return C.MS_OK
}

//export msgo_stream_stats
func msgo_stream_stats(h C.int64_t, out *C.ms_stats) (rc C.int) {
	defer guard(&rc, nil, 0)
	e := lookup(h)
	if e == nil {
		return C.MS_ERR_BAD_HANDLE
	}
	if out == nil {
		return C.MS_ERR_INVALID_ARGUMENT
	}
	st := e.s.Stats()
	*out = C.ms_stats{
		bytes_requested:   C.uint64_t(st.BytesRequested),
		bytes_read:        C.uint64_t(st.BytesRead),
		reads:             C.uint64_t(st.Reads),
		retries:           C.uint64_t(st.Retries),
		tensors_delivered: C.uint64_t(st.TensorsDelivered),
		arena_bytes:       C.uint64_t(st.ArenaBytes),
		first_tensor_ns:   C.int64_t(st.FirstTensor),
		elapsed_ns:        C.int64_t(st.Elapsed),
		memory_wait_ns:    C.int64_t(st.MemoryWait),
		consumer_wait_ns:  C.int64_t(st.ConsumerWait),
		header_bytes_read: C.uint64_t(st.HeaderBytesRead),
	}
	return C.MS_OK
}

//export msgo_stream_arena
func msgo_stream_arena(h C.int64_t, base *unsafe.Pointer, length *C.uint64_t) (rc C.int) {
	defer guard(&rc, nil, 0)
	e := lookup(h)
	if e == nil {
		return C.MS_ERR_BAD_HANDLE
	}
	if base == nil || length == nil {
		return C.MS_ERR_INVALID_ARGUMENT
	}
	if mem := e.s.Arena(); len(mem) > 0 {
		*base = unsafe.Pointer(unsafe.SliceData(mem))
		*length = C.uint64_t(len(mem))
	}
	return C.MS_OK
}

//export msgo_stream_close
func msgo_stream_close(h C.int64_t) (rc C.int) {
	defer guard(&rc, nil, 0)
	handlesMu.Lock()
	e := handles[int64(h)]
	delete(handles, int64(h))
	handlesMu.Unlock()
	if e == nil {
		return C.MS_ERR_BAD_HANDLE
	}
	_ = e.s.Close()
	return C.MS_OK
}

//export msgo_list
func msgo_list(uri *C.char, recursive C.int32_t, config *cConfig, out **C.char,
	errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if uri == nil || out == nil {
		setErr(errBuf, errLen, "ms_list: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	*out = nil
	req, err := parseConfig(config)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	objects, err := req.registry().List(context.Background(), C.GoString(uri), recursive != 0)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	if objects == nil {
		objects = []storage.ObjectInfo{}
	}
	b, err := json.Marshal(map[string]any{"objects": objects})
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*out = C.CString(string(b))
	return C.MS_OK
}

//export msgo_free
func msgo_free(p *C.char) {
	C.free(unsafe.Pointer(p))
}

//export msgo_download
func msgo_download(uri *C.char, path *C.char, config *cConfig, errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if uri == nil || path == nil {
		setErr(errBuf, errLen, "ms_download: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	// Through the local cache when one is set: a hit copies the entry, a
	// miss writes the entry through as it downloads.
	req, opener, err := configured(config, false)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	ctx := context.Background()
	obj, err := opener.Open(ctx, C.GoString(uri))
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	defer obj.Close()
	opts := fetch.Options{Concurrency: req.concurrency, ChunkBytes: req.chunkBytes, Retry: req.retry,
		Verify: req.verify, URI: C.GoString(uri)}
	if t, ok := opener.(interface {
		Tuning(string) (int, int64, bool)
	}); ok {
		c, ch, _ := t.Tuning(C.GoString(uri))
		opts.Concurrency = cmp.Or(opts.Concurrency, c)
		opts.ChunkBytes = cmp.Or(opts.ChunkBytes, ch)
	}
	err = fetch.ToFile(ctx, obj, C.GoString(path), opts)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	return C.MS_OK
}

//export msgo_read_headers
func msgo_read_headers(uris **C.char, nURIs C.int32_t, config *cConfig, out **C.char,
	errBuf *C.char, errLen C.size_t) (rc C.int) {
	defer guard(&rc, errBuf, errLen)
	if out == nil || (uris == nil && nURIs > 0) || nURIs < 0 {
		setErr(errBuf, errLen, "ms_read_headers: invalid arguments")
		return C.MS_ERR_INVALID_ARGUMENT
	}
	*out = nil
	req, opener, err := configured(config, true)
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	cfg := req.streamConfig(opener) // ReadHeaders plans no memory and verifies nothing
	files, err := stream.ReadHeaders(context.Background(), cfg, cStrings(uris, nURIs))
	if err != nil {
		return fail(errBuf, errLen, err)
	}
	*out = C.CString(string(filesJSON(files)))
	return C.MS_OK
}
