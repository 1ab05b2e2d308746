// Command msbench streams SafeTensors files through the Go API and prints
// throughput: a quick way to see the engine's speed without Python. Local
// paths, http(s) URLs and s3:// URIs (the backends configured from this
// process's environment: MODEL_STREAMER_HTTP_HEADERS, SSL_CERT_FILE,
// AWS_ENDPOINT_URL, ...), optionally through the local cache (-cache-dir).
// With -sum every byte of every tensor is read, as a user of the tensors
// would; without it the tensors are only handed out.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/model-streamer/model-streamer/go/cache"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	httpstore "github.com/model-streamer/model-streamer/go/storage/http"
	"github.com/model-streamer/model-streamer/go/storage/s3"
	"github.com/model-streamer/model-streamer/go/stream"
)

func main() {
	mode := flag.String("mode", "auto", "read mode: auto, buffered, direct, mmap")
	conc := flag.Int("concurrency", stream.DefaultConcurrency, "reads in flight")
	limit := flag.Int64("memory-limit", stream.Unlimited, "-1, 0 or bytes")
	chunk := flag.Int64("chunk", stream.DefaultChunkBytes, "bytes per read")
	drop := flag.Bool("cold", false, "drop the files from the page cache first")
	jsonOut := flag.Bool("json", false, "print one JSON object (tensors, bytes, seconds)")
	holdPrevious := flag.Bool("hold-previous", false, "keep each tensor until the next arrives, as a for loop's variable does")
	sum := flag.Bool("sum", false, "read every byte of every tensor (sum it as 64-bit words) before releasing it")
	cacheDir := flag.String("cache-dir", "", "stream object-storage URIs through the local cache in this directory")
	flag.Parse()
	m, err := fs.ParseMode(*mode)
	if err != nil {
		fail(err)
	}
	if *drop {
		for _, p := range flag.Args() {
			if err := fs.DropCache(p); err != nil {
				fail(err)
			}
		}
	}
	reg := storage.NewRegistry()
	reg.Register("file", fs.New(fs.Options{Mode: m}))
	web, err := httpstore.New(storage.EnvSettings())
	if err != nil {
		fail(err)
	}
	reg.Register("http", web)
	reg.Register("https", web)
	for _, uri := range flag.Args() {
		if strings.HasPrefix(uri, "s3://") {
			b, err := s3.New(storage.EnvSettings())
			if err != nil {
				fail(err)
			}
			reg.Register("s3", b)
			break
		}
	}
	var opener stream.Opener = reg
	var cached *cache.Opener
	if *cacheDir != "" {
		set := storage.EnvSettings()
		set[cache.DirSetting] = *cacheDir
		o, err := cache.FromSettings(reg, set, false, func(msg string) { fmt.Fprintln(os.Stderr, "msbench:", msg) })
		if err != nil {
			fail(err)
		}
		cached, _ = o.(*cache.Opener)
		opener = o.(stream.Opener)
	}
	cfg := stream.DefaultConfig(opener)
	cfg.Concurrency, cfg.MemoryLimit, cfg.ChunkBytes = *conc, *limit, *chunk
	start := time.Now()
	s, err := stream.Open(context.Background(), cfg, flag.Args(), nil)
	if err != nil {
		fail(err)
	}
	defer s.Close()
	var n, bytes int
	var check uint64
	var prev *stream.Ready
	for {
		batch, err := s.Next(context.Background(), 0, -1)
		if err == io.EOF {
			break
		} else if err != nil {
			fail(err)
		}
		for i := range batch {
			n++
			bytes += len(batch[i].Data)
			if *sum {
				check += sumWords(batch[i].Data)
			}
			if prev != nil {
				prev.Release()
				prev = nil
			}
			if *holdPrevious {
				prev = &batch[i]
			} else {
				batch[i].Release()
			}
		}
	}
	if prev != nil {
		prev.Release()
	}
	el := time.Since(start)
	st := s.Stats()
	_ = s.Close()
	var cacheNote string
	if cached != nil {
		cs := cached.Stats()
		cacheNote = fmt.Sprintf(", cache: %.2f s writing in all, %d bytes direct", time.Duration(cs.WriteNanos.Load()).Seconds(), cs.DirectBytes.Load())
		if err := cache.Wait(context.Background()); err != nil {
			fail(err)
		}
		cacheNote += fmt.Sprintf(", %d entries committed, %d failed", cs.Committed.Load(), cs.Failed.Load())
	}
	// How each file was read: the fs backend names its strategy; another
	// backend's files are counted under their scheme ("s3", "https").
	strategies := map[string]int{}
	for _, f := range s.Files() {
		name := f.Strategy
		if name == "" {
			name, _, _ = strings.Cut(f.URI, "://")
		}
		strategies[name]++
	}
	if *jsonOut {
		json.NewEncoder(os.Stdout).Encode(map[string]any{"ok": true, "tensors": n, "bytes": bytes,
			"seconds": el.Seconds(), "arena_bytes": st.ArenaBytes, "check": check})
		return
	}
	fmt.Printf("%d tensors, %.2f GB in %.2fs: %.2f GB/s (first tensor %v, arena %d MiB, memory wait %.2fs, consumer wait %.2fs, strategies %v%s)\n",
		n, float64(bytes)/1e9, el.Seconds(), float64(bytes)/1e9/el.Seconds(), st.FirstTensor, st.ArenaBytes>>20,
		st.MemoryWait.Seconds(), st.ConsumerWait.Seconds(), strategies, cacheNote)
}

// sumWords adds b up as little-endian 64-bit words (a trailing partial
// word ignored): a consumer that reads every byte.
func sumWords(b []byte) uint64 {
	var x uint64
	for ; len(b) >= 8; b = b[8:] {
		x += binary.LittleEndian.Uint64(b)
	}
	return x
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "msbench:", err)
	os.Exit(1)
}
