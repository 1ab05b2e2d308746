package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/azure"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/storage/gcs"
	httpstore "github.com/model-streamer/model-streamer/go/storage/http"
	"github.com/model-streamer/model-streamer/go/storage/s3"
	"github.com/model-streamer/model-streamer/go/stream"
)

// request is what a call's ms_config says, in Go terms.
type request struct {
	concurrency int
	memoryLimit int64
	chunkBytes  int64
	mode        fs.Mode
	settings    storage.Settings
	retry       storage.RetryPolicy
	verify      integrity.Mode // MODEL_STREAMER_VERIFY
}

// parseConfig reads a call's ms_config; what it refuses is an
// ErrInvalidRequest.
func parseConfig(config *cConfig) (request, error) {
	r, err := parseFields(config)
	if err != nil {
		return r, invalidRequest(err)
	}
	return r, nil
}

func invalidRequest(err error) error { return fmt.Errorf("%w: %v", stream.ErrInvalidRequest, err) }

// streamConfig is the engine's configuration for r, reading through o.
func (r request) streamConfig(o stream.Opener) stream.Config {
	cfg := stream.DefaultConfig(o)
	cfg.Concurrency, cfg.MemoryLimit, cfg.ChunkBytes, cfg.Retry = r.concurrency, r.memoryLimit, r.chunkBytes, r.retry
	cfg.Verify = r.verify
	return cfg
}

func parseFields(config *cConfig) (request, error) {
	r := request{memoryLimit: -1, settings: storage.Settings{}}
	if config == nil {
		return r, nil
	}
	r.concurrency = int(config.concurrency)
	r.memoryLimit = int64(config.memory_limit)
	r.chunkBytes = int64(config.chunk_bytes)
	r.mode = fs.Mode(config.read_mode)
	if r.mode < fs.Auto || r.mode > fs.AutoRead {
		return r, fmt.Errorf("unknown read mode %d", config.read_mode)
	}
	if r.memoryLimit < -1 {
		return r, fmt.Errorf("memory limit %d: must be -1, 0 or a byte count", r.memoryLimit)
	}
	for _, kv := range cStrings(config.settings, config.n_settings) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return r, fmt.Errorf("setting %q is not NAME=VALUE", kv)
		}
		r.settings[k] = v
	}
	verify, err := integrity.FromSettings(r.settings)
	if err != nil {
		return r, err
	}
	r.verify = verify
	r.retry = storage.DefaultRetryPolicy
	if v := r.settings["MODEL_STREAMER_MAX_RETRIES"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return r, fmt.Errorf("MODEL_STREAMER_MAX_RETRIES=%q: expected a count >= 0", v)
		}
		r.retry.MaxRetries = n
	}
	if v := r.settings["MODEL_STREAMER_RETRY_TIMEOUT_MS"]; v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 {
			return r, fmt.Errorf("MODEL_STREAMER_RETRY_TIMEOUT_MS=%q: expected milliseconds >= 0", v)
		}
		r.retry.Timeout = time.Duration(ms) * time.Millisecond
	}
	return r, nil
}

// registry builds the backends for one request. Object-storage backends
// are constructed lazily, on the first URI of their scheme: building one
// resolves credentials, which a local-only request must not pay for.
func (r request) registry() *storage.Registry {
	reg := storage.NewRegistry()
	reg.Register("file", fs.New(fs.Options{Mode: r.mode}))
	// The s3 backend prefers AWS_ENDPOINT_URL_S3 over AWS_ENDPOINT_URL; so does this.
	gsViaS3 := strings.Contains(r.settings.Get("AWS_ENDPOINT_URL_S3", r.settings["AWS_ENDPOINT_URL"]), "storage.googleapis.com")
	for scheme, build := range map[string]func(storage.Settings) (storage.Backend, error){
		"s3": s3.New,
		"gs": func(s storage.Settings) (storage.Backend, error) {
			if gsViaS3 {
				return s3.New(s) // HMAC keys through GCS's S3-compatible API
			}
			return gcs.New(s)
		},
		"az": func(s storage.Settings) (storage.Backend, error) { return azure.New(s) },
	} {
		reg.Register(scheme, sharedBackend(scheme, r.settings, build))
	}
	// One backend (one connection pool) for both schemes of URLs.
	web := sharedBackend("http", r.settings, httpstore.New)
	reg.Register("http", web)
	reg.Register("https", web)
	return reg
}

// backends keeps this process's object-storage backends by scheme and
// settings, so that requests with the same settings share one client and
// its warm connections rather than each building its own: a pull of N
// files was N clients, each dialling (and over TLS, handshaking) up to its
// concurrency in connections, and a distributed load's header and data
// streams were two. Settings name everything a backend depends on
// (endpoint, credentials, timeouts); the working directory is part of the
// key too, for the trace file a backend opens there.
var backends struct {
	mu    sync.Mutex
	byKey map[string]*lazyBackend
	order []string // oldest first
}

// maxBackends bounds the backends kept: a process whose settings change
// call after call builds new ones, and the oldest are let go.
const maxBackends = 16

func sharedBackend(scheme string, s storage.Settings, build func(storage.Settings) (storage.Backend, error)) *lazyBackend {
	key := backendKey(scheme, s)
	backends.mu.Lock()
	defer backends.mu.Unlock()
	if b, ok := backends.byKey[key]; ok {
		return b
	}
	if backends.byKey == nil {
		backends.byKey = map[string]*lazyBackend{}
	}
	if len(backends.order) >= maxBackends {
		delete(backends.byKey, backends.order[0])
		backends.order = backends.order[1:]
	}
	b := &lazyBackend{settings: maps.Clone(s), build: build, key: key}
	backends.byKey[key] = b
	backends.order = append(backends.order, key)
	return b
}

func backendKey(scheme string, s storage.Settings) string {
	var k strings.Builder
	k.WriteString(scheme)
	dir, _ := os.Getwd()
	k.WriteString("\x00" + dir)
	for _, name := range slices.Sorted(maps.Keys(s)) {
		k.WriteString("\x00" + name + "=" + s[name])
	}
	return k.String()
}

// lazyBackend builds its backend on first use and forwards to it.
type lazyBackend struct {
	settings storage.Settings
	build    func(storage.Settings) (storage.Backend, error)
	key      string // in backends
	once     sync.Once
	b        storage.Backend
	err      error
}

func (l *lazyBackend) get() (storage.Backend, error) {
	l.once.Do(func() {
		l.b, l.err = l.build(l.settings)
		if l.err != nil {
			// Not kept: the next request builds again (credentials that
			// were not there yet, a metadata server that did not answer).
			forgetBackend(l)
		}
	})
	return l.b, l.err
}

func forgetBackend(l *lazyBackend) {
	backends.mu.Lock()
	defer backends.mu.Unlock()
	if backends.byKey[l.key] == l {
		delete(backends.byKey, l.key)
		backends.order = slices.DeleteFunc(backends.order, func(k string) bool { return k == l.key })
	}
}

// named puts uri into a backend construction error, which cannot know it.
func named(uri string, err error) error {
	var se *storage.Error
	if errors.As(err, &se) && se.URI == "" {
		c := *se
		c.URI = uri
		return &c
	}
	return &storage.Error{Op: "configure", URI: uri, Code: storage.CodeOf(err), Err: err}
}

func (l *lazyBackend) Open(ctx context.Context, uri string) (storage.Object, error) {
	b, err := l.get()
	if err != nil {
		return nil, named(uri, err)
	}
	return b.Open(ctx, uri)
}

func (l *lazyBackend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	b, err := l.get()
	if err != nil {
		return nil, named(uri, err)
	}
	lister, ok := b.(storage.Lister)
	if !ok {
		why := "backend cannot list"
		if n, ok := b.(interface{ NoListing() string }); ok {
			why = n.NoListing()
		}
		return nil, &storage.Error{Op: "list", URI: httpstore.RedactString(uri), Code: storage.InvalidArgument, Err: errors.New(why)}
	}
	return lister.List(ctx, uri, recursive)
}

func (l *lazyBackend) DefaultChunkBytes() int64 {
	if t, ok := l.tuned(); ok {
		return t.DefaultChunkBytes()
	}
	return 0
}

func (l *lazyBackend) DefaultConcurrency() int {
	if t, ok := l.tuned(); ok {
		return t.DefaultConcurrency()
	}
	return 0
}

func (l *lazyBackend) tuned() (storage.Tuned, bool) {
	b, err := l.get()
	if err != nil {
		return nil, false
	}
	t, ok := b.(storage.Tuned)
	return t, ok
}
