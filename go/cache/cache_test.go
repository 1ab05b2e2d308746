package cache

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestClaim(t *testing.T) {
	tests := []struct {
		name    string
		before  []span
		lo, hi  int64
		fresh   []span
		covered []span
	}{
		{"empty", nil, 0, 10, []span{{0, 10}}, []span{{0, 10}}},
		{"disjoint after", []span{{0, 10}}, 20, 30, []span{{20, 30}}, []span{{0, 10}, {20, 30}}},
		{"disjoint before", []span{{20, 30}}, 0, 10, []span{{0, 10}}, []span{{0, 10}, {20, 30}}},
		{"touching merges", []span{{0, 10}}, 10, 20, []span{{10, 20}}, []span{{0, 20}}},
		{"inside", []span{{0, 30}}, 5, 25, nil, []span{{0, 30}}},
		{"overlap head", []span{{10, 30}}, 0, 20, []span{{0, 10}}, []span{{0, 30}}},
		{"overlap tail", []span{{0, 20}}, 10, 30, []span{{20, 30}}, []span{{0, 30}}},
		{"bridges two", []span{{0, 10}, {20, 30}}, 5, 25, []span{{10, 20}}, []span{{0, 30}}},
		{"spans three gaps", []span{{10, 20}, {30, 40}}, 0, 50, []span{{0, 10}, {20, 30}, {40, 50}}, []span{{0, 50}}},
		{"between, untouched", []span{{0, 10}, {40, 50}}, 20, 30, []span{{20, 30}}, []span{{0, 10}, {20, 30}, {40, 50}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &writer{covered: slices.Clone(tt.before)}
			var before int64
			for _, s := range tt.before {
				before += s.hi - s.lo
			}
			w.total = before
			fresh := w.claim(tt.lo, tt.hi)
			if !slices.Equal(fresh, tt.fresh) || !slices.Equal(w.covered, tt.covered) {
				t.Fatalf("claim [%d,%d) over %v: fresh %v covered %v, want %v and %v",
					tt.lo, tt.hi, tt.before, fresh, w.covered, tt.fresh, tt.covered)
			}
			var after int64
			for _, s := range w.covered {
				after += s.hi - s.lo
			}
			if w.total != after {
				t.Fatalf("total %d, covered %d bytes", w.total, after)
			}
		})
	}
}

func TestParseMaxBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"1000", 1000, true},
		{"4K", 4 << 10, true},
		{"500G", 500 << 30, true},
		{"2GiB", 2 << 30, true},
		{"3 MB", 3 << 20, true},
		{"1t", 1 << 40, true},
		{"-1", 0, false},
		{"B", 0, false},
		{"lots", 0, false},
		{"1.5G", 0, false},
		{"99999999999T", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseMaxBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseMaxBytes(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// Prune removes what dead writers left (temporary files, lone metadata and
// lock files), but never the temporary file of a live writer, whose lock
// is held.
func TestPruneSweepsDeadWritesOnly(t *testing.T) {
	c, err := Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	dead := c.entry("ns", "s3://b/dead", "etag=1", 10)
	live := c.entry("ns", "s3://b/live", "etag=1", 10)
	lone := c.entry("ns", "s3://b/lone", "etag=1", 10)
	for _, p := range []string{dead.base + tmpInfix + "1.a", live.base + tmpInfix + "2.b", lone.meta()} {
		if err := os.WriteFile(p, []byte("0123456789"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	held, err := lock(live.lock(), unix.LOCK_EX) // a live writer
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	r, err := c.Prune()
	if err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(c.Dir(), "*"))
	slices.Sort(left)
	want := []string{live.lock(), live.base + tmpInfix + "2.b"}
	slices.Sort(want)
	if r.Partial != 1 || !slices.Equal(left, want) {
		t.Fatalf("prune: %+v, left %v, want %v", r, left, want)
	}
}
