package stream

import (
	"context"

	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Memory limit values with a meaning of their own (RUNAI_STREAMER_MEMORY_LIMIT).
const (
	// Unlimited sizes the buffer to the whole request; nothing is reused.
	Unlimited int64 = -1
	// LargestTensor sizes the buffer to the largest requested tensor.
	LargestTensor int64 = 0
)

const (
	DefaultConcurrency = 16
	DefaultChunkBytes  = 8 << 20
	// alignment is the granularity of every arena placement and aligned read:
	// O_DIRECT wants buffer address, file offset and length on block bounds.
	alignment = 4096
)

// Opener opens storage objects by URI; *storage.Registry is one.
type Opener interface {
	Open(ctx context.Context, uri string) (storage.Object, error)
}

// tuner is implemented by openers that know their backends' preferred
// read size and parallelism (*storage.Registry does).
type tuner interface {
	Tuning(uri string) (concurrency int, chunkBytes int64, ok bool)
}

// Config controls one stream. The zero value is not useful: start from
// DefaultConfig.
type Config struct {
	// Concurrency is the number of reads in flight (<= 0: DefaultConcurrency).
	Concurrency int
	// MemoryLimit bounds the CPU memory the stream holds in flight:
	// Unlimited (-1), LargestTensor (0) or a byte count, which may not be
	// below the largest requested tensor.
	MemoryLimit int64
	// ChunkBytes is the size of one read (<= 0: DefaultChunkBytes).
	ChunkBytes int64
	// Storage opens the files. Required.
	Storage Opener
	// Retry bounds the retries of a chunk after transient failures
	// (zero value: storage.DefaultRetryPolicy).
	Retry storage.RetryPolicy
	// Verify checks each object read whole against the checksum its store
	// keeps (MODEL_STREAMER_VERIFY; zero value: integrity.Auto). See
	// verify.go for what is verified and when a mismatch is reported.
	Verify integrity.Mode

	// computeSidecar: the stream computes each file's checksum sidecar
	// instead of reading one (OpenChecksum).
	computeSidecar bool
}

// DefaultConfig returns the documented defaults: 16 readers, no memory cap,
// 8 MiB reads, over the given storage.
func DefaultConfig(s Opener) Config {
	return Config{
		Concurrency: DefaultConcurrency,
		MemoryLimit: Unlimited,
		ChunkBytes:  DefaultChunkBytes,
		Storage:     s,
		Retry:       storage.DefaultRetryPolicy,
	}
}

// normalized fills unset values from the storage's own defaults (object
// stores want more, larger reads in flight than a disk) or the engine's.
func (c Config) normalized(uri string) Config {
	concurrency, chunk := DefaultConcurrency, int64(DefaultChunkBytes)
	if t, ok := c.Storage.(tuner); ok {
		if cc, ch, ok := t.Tuning(uri); ok && cc > 0 && ch > 0 {
			concurrency, chunk = cc, ch
		}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = concurrency
	}
	if c.ChunkBytes <= 0 {
		c.ChunkBytes = chunk
	}
	c.ChunkBytes = alignUp(c.ChunkBytes, alignment)
	if c.Retry == (storage.RetryPolicy{}) {
		c.Retry = storage.DefaultRetryPolicy
	}
	return c
}

func alignDown(v, a int64) int64 { return v - v%a }
func alignUp(v, a int64) int64   { return alignDown(v+a-1, a) }
