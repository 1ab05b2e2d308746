package faultproxy

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
)

// flipped is object with bit of byte off inverted, sliced to [from, to].
func flipped(off int64, bit uint, from, to int) []byte {
	b := bytes.Clone(object)
	b[off] ^= 1 << bit
	return b[from : to+1]
}

func TestFlip(t *testing.T) {
	up := upstream(t)
	isGet := func(r *http.Request) bool { return r.Method == http.MethodGet }
	cases := []struct {
		name       string
		flip       Flip
		match      func(*http.Request) bool
		from, to   int // the range asked for; -1: none (the whole object)
		want       []byte
		wantFaults int
	}{
		{"object offset in the first range", Flip{Offset: 10, Bit: 0}, nil, 0, 4095,
			flipped(10, 0, 0, 4095), 1},
		{"object offset in a middle range", Flip{Offset: 500_000, Bit: 7}, nil, 400_000, 600_000,
			flipped(500_000, 7, 400_000, 600_000), 1},
		{"the last byte", Flip{Offset: objectSize - 1, Bit: 3}, nil, objectSize - 100, objectSize - 1,
			flipped(objectSize-1, 3, objectSize-100, objectSize-1), 1},
		{"a range that does not carry it", Flip{Offset: 10}, nil, 100, 200, object[100:201], 0},
		{"range start is the offset", Flip{Offset: 100, Bit: 1}, nil, 100, 200, flipped(100, 1, 100, 200), 1},
		{"body offset", Flip{Offset: 5, Body: true, Bit: 2}, nil, 1000, 2000, flipped(1005, 2, 1000, 2000), 1},
		{"whole object without Range", Flip{Offset: 777_777, Bit: 4}, isGet, -1, objectSize - 1,
			flipped(777_777, 4, 0, objectSize-1), 1},
		{"not matched (no Range header)", Flip{Offset: 5}, nil, -1, objectSize - 1, object, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := Start(t, up.URL)
			flip := c.flip
			flip.Count = 1
			p.Set(Fault{Flip: &flip, Match: c.match})
			var h http.Header
			if c.from >= 0 {
				h = ranged(c.from, c.to)
			}
			r := do(t, client(), http.MethodGet, p.URL()+"/object", h, nil)
			if r.err != nil || !bytes.Equal(r.body, c.want) {
				t.Fatalf("GET: %v, %d bytes, equal to the expected %v", r.err, len(r.body), bytes.Equal(r.body, c.want))
			}
			if got := r.header.Get("Content-Length"); c.from >= 0 && got != "" && got != itoa(c.to-c.from+1) {
				t.Fatalf("Content-Length %s changed", got)
			}
			stats(t, p, 1, c.wantFaults)
			// Count 1: the next response carrying the byte is clean.
			r = do(t, client(), http.MethodGet, p.URL()+"/object", h, nil)
			if c.from < 0 {
				c.from = 0
			}
			if !bytes.Equal(r.body, object[c.from:c.to+1]) {
				t.Fatal("the second response is corrupt too (Count 1)")
			}
		})
	}
}

// Always corrupts every response that carries the byte.
func TestFlipAlways(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	p.Set(Fault{Flip: &Flip{Offset: 300, Count: Always}})
	for range 3 {
		r := do(t, client(), http.MethodGet, p.URL()+"/object", ranged(0, 999), nil)
		if !bytes.Equal(r.body, flipped(300, 0, 0, 999)) {
			t.Fatal("not corrupted")
		}
	}
	stats(t, p, 3, 3)
	p.Clear()
	if r := do(t, client(), http.MethodGet, p.URL()+"/object", ranged(0, 999), nil); !bytes.Equal(r.body, object[:1000]) {
		t.Fatal("corrupted after Clear")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
