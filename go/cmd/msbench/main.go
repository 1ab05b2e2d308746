// Command msbench streams SafeTensors files through the Go API and prints
// throughput: a quick way to see the engine's speed without Python. Local
// paths and http(s) URLs (the http backend, configured from this process's
// environment: MODEL_STREAMER_HTTP_HEADERS, SSL_CERT_FILE, ...).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	httpstore "github.com/model-streamer/model-streamer/go/storage/http"
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
	cfg := stream.DefaultConfig(reg)
	cfg.Concurrency, cfg.MemoryLimit, cfg.ChunkBytes = *conc, *limit, *chunk
	start := time.Now()
	s, err := stream.Open(context.Background(), cfg, flag.Args(), nil)
	if err != nil {
		fail(err)
	}
	defer s.Close()
	var n, bytes int
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
	strategies := map[string]int{}
	for _, f := range s.Files() {
		strategies[f.Strategy]++
	}
	if *jsonOut {
		json.NewEncoder(os.Stdout).Encode(map[string]any{"ok": true, "tensors": n, "bytes": bytes,
			"seconds": el.Seconds(), "arena_bytes": st.ArenaBytes})
		return
	}
	fmt.Printf("%d tensors, %.2f GB in %.2fs: %.2f GB/s (first tensor %v, arena %d MiB, strategies %v)\n",
		n, float64(bytes)/1e9, el.Seconds(), float64(bytes)/1e9/el.Seconds(), st.FirstTensor, st.ArenaBytes>>20, strategies)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "msbench:", err)
	os.Exit(1)
}
