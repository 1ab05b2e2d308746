package fs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
)

// TestConformance runs the storage conformance suite against the file
// system backend in every read mode, with plain paths and file:// URIs.
func TestConformance(t *testing.T) {
	for _, mode := range []fs.Mode{fs.Auto, fs.Buffered, fs.Direct, fs.Mmap} {
		for _, fileURI := range []bool{false, true} {
			if fileURI && mode != fs.Auto {
				continue
			}
			name := mode.String()
			if fileURI {
				name += "/file-uri"
			}
			t.Run(name, func(t *testing.T) {
				root := t.TempDir()
				uri := func(p string) string {
					if fileURI {
						return "file://" + p
					}
					return p
				}
				storagetest.Run(t, storagetest.Fixture{
					Backend: fs.New(fs.Options{Mode: mode}),
					Put: func(t testing.TB, name string, data []byte) string {
						t.Helper()
						p := filepath.Join(root, filepath.FromSlash(name))
						if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
							t.Fatal(err)
						}
						if err := os.WriteFile(p, data, 0o644); err != nil {
							t.Fatal(err)
						}
						return uri(p)
					},
					Missing: func(t testing.TB) string {
						return uri(filepath.Join(root, "no-such-object.bin"))
					},
				})
			})
		}
	}
}
