package stream_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/model-streamer/model-streamer/go/internal/sttest"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// Stream every tensor of a checkpoint with a 1 MiB memory cap.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "model.safetensors")
	_, _ = sttest.Write(path, []sttest.Tensor{
		{Name: "embed", DType: "BF16", Shape: []int64{256, 512}},
		{Name: "norm", DType: "F32", Shape: []int64{512}},
	}, 1)

	files := storage.NewRegistry()
	files.Register("file", fs.New(fs.Options{}))
	cfg := stream.DefaultConfig(files)
	cfg.MemoryLimit = 1 << 20

	s, err := stream.Open(context.Background(), cfg, []string{path}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	var total int
	for {
		batch, err := s.Next(context.Background(), 0, -1)
		if err == io.EOF {
			break
		} else if err != nil {
			fmt.Println(err)
			return
		}
		for _, r := range batch {
			total += len(r.Data) // use r.Data, then give the memory back
			r.Release()
		}
	}
	fmt.Println("bytes:", total)
	// Output: bytes: 264192
}
