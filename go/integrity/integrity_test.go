package integrity

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

func TestParseMode(t *testing.T) {
	cases := []struct {
		in   string
		want Mode
		err  bool
	}{
		{"", Auto, false}, {"auto", Auto, false}, {" AUTO ", Auto, false},
		{"off", Off, false}, {"Off", Off, false}, {"require", Require, false},
		{"on", Auto, true}, {"1", Auto, true}, {"strict", Auto, true},
	}
	for _, c := range cases {
		got, err := ParseMode(c.in)
		if (err != nil) != c.err || (err == nil && got != c.want) {
			t.Errorf("ParseMode(%q) = %v, %v", c.in, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "MODEL_STREAMER_VERIFY") {
			t.Errorf("error %q does not name the setting", err)
		}
	}
}

type fakeObject struct {
	sums   []storage.Checksum
	reason string
}

func (fakeObject) Size() int64                                        { return 0 }
func (fakeObject) ReadAt(context.Context, []byte, int64) (int, error) { return 0, nil }
func (fakeObject) Close() error                                       { return nil }
func (o fakeObject) Checksums() []storage.Checksum                    { return o.sums }
func (o fakeObject) NoChecksumReason() string                         { return o.reason }

// plainObject is an object of a store without checksums.
type plainObject struct{}

func (plainObject) Size() int64                                        { return 0 }
func (plainObject) ReadAt(context.Context, []byte, int64) (int, error) { return 0, nil }
func (plainObject) Close() error                                       { return nil }

func TestWantPrefersCRCs(t *testing.T) {
	md5 := storage.Checksum{Algorithm: checksum.MD5, Value: make([]byte, 16)}
	crc32 := storage.Checksum{Algorithm: checksum.CRC32, Value: make([]byte, 4)}
	crc32c := storage.Checksum{Algorithm: checksum.CRC32C, Value: make([]byte, 4)}
	short := storage.Checksum{Algorithm: checksum.CRC32C, Value: make([]byte, 3)}
	cases := []struct {
		name string
		obj  storage.Object
		mode Mode
		want checksum.Algorithm
		why  string
	}{
		{"md5 then crc32", fakeObject{sums: []storage.Checksum{md5, crc32}}, Auto, checksum.CRC32, ""},
		{"crc32c wins", fakeObject{sums: []storage.Checksum{crc32, md5, crc32c}}, Auto, checksum.CRC32C, ""},
		{"md5 only, require", fakeObject{sums: []storage.Checksum{md5}}, Require, checksum.MD5, ""},
		{"md5 only, auto", fakeObject{sums: []storage.Checksum{md5}}, Auto, checksum.MD5, ""},
		{"wrong length ignored", fakeObject{sums: []storage.Checksum{short}}, Auto, "", "no whole-object checksum"},
		{"reason passed on", fakeObject{reason: "composite"}, Auto, "", "composite"},
		{"not checksummed", plainObject{}, Require, "", "local files"},
	}
	for _, c := range cases {
		got, why, ok := Want(c.obj, c.mode)
		if ok != (c.want != "") || got.Algorithm != c.want || !strings.Contains(why, c.why) {
			t.Errorf("%s: Want = %v, %q, %v", c.name, got, why, ok)
		}
	}
}

func TestErrorsMatchErrChecksum(t *testing.T) {
	m := &MismatchError{URI: "s3://b/k", Want: storage.Checksum{Algorithm: checksum.CRC32C, Value: []byte{1, 2, 3, 4}, Source: "x"},
		Computed: []byte{5, 6, 7, 8}, Size: 10}
	if !errors.Is(m, ErrChecksum) || !errors.Is(&UnverifiableError{URI: "u", Reason: "r"}, ErrChecksum) {
		t.Fatal("errors.Is(ErrChecksum) fails")
	}
	if want := "s3://b/k: checksum mismatch: crc32c expected 01020304, computed 05060708 ("; !strings.HasPrefix(m.Error(), want) {
		t.Fatalf("message %q, want it to start with %q", m.Error(), want)
	}
}

// Pieces added out of order from many goroutines give the whole CRC; a gap
// or an overlap is an error, never a value.
func TestPieces(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	data := make([]byte, 300_000)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	type span struct{ off, n int }
	var spans []span
	for off := 0; off < len(data); {
		n := min(rng.IntN(20000), len(data)-off)
		spans = append(spans, span{off, n})
		off += n
	}
	for _, alg := range []checksum.Algorithm{checksum.CRC32, checksum.CRC32C, checksum.CRC64NVME} {
		p := NewPieces(alg)
		var wg sync.WaitGroup
		for _, i := range rng.Perm(len(spans)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sp := spans[i]
				p.Add(int64(sp.off), data[sp.off:sp.off+sp.n])
			}()
		}
		wg.Wait()
		got, err := p.Sum(int64(len(data)))
		if err != nil || !bytes.Equal(got, checksum.Bytes(alg, checksum.Sum(alg, data))) {
			t.Fatalf("%s: Sum = %x, %v", alg, got, err)
		}
		if _, err := p.Sum(int64(len(data)) + 1); err == nil {
			t.Fatalf("%s: Sum past the pieces is not an error", alg)
		}
		p.Add(5, data[5:9]) // an overlap
		if _, err := p.Sum(int64(len(data))); err == nil {
			t.Fatalf("%s: overlapping pieces are not an error", alg)
		}
		gap := NewPieces(alg)
		gap.Add(0, data[:10])
		gap.Add(11, data[11:20])
		if _, err := gap.Sum(20); err == nil {
			t.Fatalf("%s: a gap is not an error", alg)
		}
	}
	empty := NewPieces(checksum.CRC32C)
	if got, err := empty.Sum(0); err != nil || !bytes.Equal(got, []byte{0, 0, 0, 0}) {
		t.Fatalf("empty object: %x, %v", got, err)
	}
}
