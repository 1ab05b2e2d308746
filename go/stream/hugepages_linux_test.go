package stream_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// pinningBackend serves memBackend's objects as a store's object that a
// local cache writes through with O_DIRECT presents itself.
type pinningBackend struct{ *memBackend }

func (b pinningBackend) Open(ctx context.Context, uri string) (storage.Object, error) {
	obj, err := b.memBackend.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	return pinningObject{obj.(*memObject)}, nil
}

type pinningObject struct{ *memObject }

func (pinningObject) PinsMemory() bool { return true }

// vmFlags returns the VmFlags of the mapping of this process that holds addr.
func vmFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inside := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 && strings.Contains(line[:strings.IndexByte(line, ' ')], "-") {
			inside = lo <= addr && addr < hi
			continue
		}
		if flags, ok := strings.CutPrefix(line, "VmFlags:"); ok && inside {
			return strings.Fields(flags)
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return nil
}

// The arena advises transparent huge pages where the kernel pins its memory
// for direct I/O (local files; a store's object written through to the
// cache), and for memory a socket only copies into unless the machine
// reports its free memory to a host, where a huge page's first touch is
// slow (docs/design.md §4).
func TestHugePagesWhereMemoryIsPinnedOrCheap(t *testing.T) {
	cp := writeCheckpoint(t, 51, 1, 8, 1<<20)
	total := 0
	for _, v := range cp.want {
		total += len(v)
	}
	if total < 4<<20 {
		t.Fatalf("checkpoint of %d tensor bytes: the ring must be past 2 MiB to be advised at all", total)
	}
	data, err := os.ReadFile(cp.paths[0])
	if err != nil {
		t.Fatal(err)
	}
	mem := &memBackend{files: map[string][]byte{"mem://model": data}}
	store := storage.NewRegistry()
	store.Register("mem", mem)
	pinning := storage.NewRegistry()
	pinning.Register("mem", pinningBackend{mem})
	cases := []struct {
		name      string
		reporting bool // the host takes free memory back
		opener    stream.Opener
		uri       string
		huge      bool
	}{
		{"a store's object", true, store, "mem://model", false},
		{"a store's object, no free page reporting", false, store, "mem://model", true},
		{"a store's object written through", true, pinning, "mem://model", true},
		{"a local file read with O_DIRECT", true, registry(fs.Direct), cp.paths[0], true},
		{"a local file read buffered", true, registry(fs.Buffered), cp.paths[0], true},
		{"a local file read with O_DIRECT, no free page reporting", false, registry(fs.Direct), cp.paths[0], true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(stream.SetFreePageReporting(tc.reporting))
			s, err := stream.Open(context.Background(), stream.DefaultConfig(tc.opener), []string{tc.uri}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			files := s.Files()
			for {
				batch, err := s.Next(context.Background(), 1, 10*time.Second)
				if err != nil || batch == nil {
					t.Fatalf("no tensor with bytes arrived: %v", err)
				}
				r := batch[0]
				if len(r.Data) == 0 {
					r.Release()
					continue
				}
				if name := files[r.File].Tensors[r.Tensor].Name; string(r.Data) != string(cp.want[name]) {
					t.Fatalf("%s: wrong bytes", name)
				}
				flags := vmFlags(t, uintptr(unsafe.Pointer(&r.Data[0])))
				r.Release()
				if got := slices.Contains(flags, "hg"); got != tc.huge {
					t.Fatalf("memory advised for huge pages: %v, want %v (VmFlags %v)", got, tc.huge, flags)
				}
				return
			}
		})
	}
}
