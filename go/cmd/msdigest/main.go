// Command msdigest is the Go example program: it links the engine
// (go/stream) directly, streams every tensor of a SafeTensors checkpoint and
// prints one JSON line with a digest of the tensors that does not depend on
// the order they arrive in:
//
//	msdigest /models/llama            # every *.safetensors in the directory
//	msdigest a.safetensors b.safetensors
//
// The digest is SHA-256 over the tensors sorted by (file name, tensor name),
// each contributing "file\x00tensor\x00" and the SHA-256 of its bytes, so any
// reader of the files can compute it too (the image test does, in Python).
// The loader image carries it as model-streamer-go-example: the image proves
// the Go path as well as the Python one.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

type summary struct {
	Files   int     `json:"files"`
	Tensors int     `json:"tensors"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	SHA256  string  `json:"sha256"`
}

func main() {
	limit := flag.Int64("memory-limit", 1<<30, "CPU buffer bytes (-1: unlimited, 0: the largest tensor)")
	flag.Parse()
	files, err := expand(flag.Args())
	if err != nil {
		fail(err)
	}
	s, err := digest(context.Background(), files, *limit)
	if err != nil {
		fail(err)
	}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
}

// expand turns directories into their *.safetensors files (sorted).
func expand(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("usage: msdigest DIR | FILE...")
	}
	var files []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, a)
			continue
		}
		found, err := filepath.Glob(filepath.Join(a, "*.safetensors"))
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no *.safetensors files", a)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	return files, nil
}

func digest(ctx context.Context, files []string, limit int64) (summary, error) {
	reg := storage.NewRegistry()
	reg.Register("file", fs.New(fs.Options{}))
	cfg := stream.DefaultConfig(reg)
	cfg.MemoryLimit = limit
	start := time.Now()
	s, err := stream.Open(ctx, cfg, files, nil)
	if err != nil {
		return summary{}, err
	}
	defer s.Close()
	sums := map[string][sha256.Size]byte{}
	var total int64
	for {
		batch, err := s.Next(ctx, 0, -1)
		if err == io.EOF {
			break
		} else if err != nil {
			return summary{}, err
		}
		for _, t := range batch {
			name := s.Files()[t.File].Tensors[t.Tensor].Name
			sums[filepath.Base(files[t.File])+"\x00"+name] = sha256.Sum256(t.Data)
			total += int64(len(t.Data))
			t.Release() // the buffer goes back to the engine
		}
	}
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		sum := sums[k]
		h.Write([]byte(k + "\x00"))
		h.Write(sum[:])
	}
	return summary{Files: len(files), Tensors: len(keys), Bytes: total,
		Seconds: time.Since(start).Seconds(), SHA256: fmt.Sprintf("%x", h.Sum(nil))}, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "msdigest:", err)
	os.Exit(1)
}
