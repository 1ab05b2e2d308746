package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
)

// request is what a call's ms_config says, in Go terms.
type request struct {
	concurrency int
	memoryLimit int64
	chunkBytes  int64
	mode        fs.Mode
	settings    storage.Settings
	retry       storage.RetryPolicy
}

func parseConfig(config *cConfig) (request, error) {
	r := request{memoryLimit: -1, settings: storage.Settings{}}
	if config == nil {
		return r, nil
	}
	r.concurrency = int(config.concurrency)
	r.memoryLimit = int64(config.memory_limit)
	r.chunkBytes = int64(config.chunk_bytes)
	r.mode = fs.Mode(config.read_mode)
	if r.mode < fs.Auto || r.mode > fs.Mmap {
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
// are constructed lazily, on the first URI of their scheme.
func (r request) registry() *storage.Registry {
	reg := storage.NewRegistry()
	reg.Register("file", fs.New(fs.Options{Mode: r.mode}))
	return reg
}
