package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Put replaces a file whole (never a part: a temporary file renamed into
// place), leaves no temporary file behind, and maps failures to codes.
func TestPut(t *testing.T) {
	dir := t.TempDir()
	b := New(Options{}).(storage.Putter)
	ctx := context.Background()
	path := filepath.Join(dir, "m.safetensors.checksums.json")
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		uri  string
		data []byte
		code storage.Code // 0: success
	}{
		{"new file", ctx, path, []byte("first"), 0},
		{"replaces", ctx, "file://" + path, []byte("second, longer"), 0},
		{"empty", ctx, path, nil, 0},
		{"missing directory", ctx, filepath.Join(dir, "no", "x"), []byte("x"), storage.NotFound},
		{"canceled", canceled, path, []byte("x"), storage.Canceled},
		{"other scheme", ctx, "s3://b/k", []byte("x"), storage.InvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, _ := os.ReadFile(path)
			err := b.Put(c.ctx, c.uri, c.data)
			var se *storage.Error
			if c.code != 0 {
				if !errors.As(err, &se) || se.Code != c.code || se.URI != c.uri {
					t.Fatalf("Put = %v, want code %v naming %s", err, c.code, c.uri)
				}
				if got, _ := os.ReadFile(path); !bytes.Equal(got, before) {
					t.Fatal("a failed Put changed the file")
				}
			} else if err != nil {
				t.Fatal(err)
			} else if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, c.data) {
				t.Fatalf("file holds %q, %v; want %q", got, err, c.data)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.Name() != filepath.Base(path) {
					t.Fatalf("left behind: %s", e.Name())
				}
			}
		})
	}
}
