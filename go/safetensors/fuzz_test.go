package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"testing"
)

// fuzzImage lays out the head of a file image from the fuzz arguments: an
// 8-byte prefix holding len(header)+lenDelta (so the fuzzer also reaches
// prefixes that disagree with the header), then the header. The data section
// is represented only by its length: neither HeaderLen nor Parse reads it,
// and materializing up to 64 KiB per run would slow fuzzing, and above all
// the fuzzer's input minimization, several-fold.
func fuzzImage(header []byte, dataLen uint16, lenDelta int8) (img []byte, fileSize int64) {
	n := uint64(int64(len(header)) + int64(lenDelta))
	img = binary.LittleEndian.AppendUint64(make([]byte, 0, PrefixLen+len(header)), n)
	img = append(img, header...)
	return img, int64(len(img)) + int64(dataLen)
}

// FuzzParse drives the two steps a reader takes on untrusted bytes. Beyond
// "never panics", it checks that whatever Parse accepts is safe to act on:
// the tensors tile the data section and their sizes follow from dtype and
// shape. encoding/json serves as an independent oracle: Parse may be
// stricter, but it must never accept JSON that encoding/json rejects, and it
// must see the same top-level keys.
func FuzzParse(f *testing.F) {
	seeds := []struct {
		header  string
		dataLen uint16
	}{
		{`{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}`, 16},
		{`{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[],"data_offsets":[6,7]}}    `, 7},
		{`{"z":{"dtype":"F16","shape":[0],"data_offsets":[0,0]},"y":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"x":{"dtype":"C64","shape":[0,3],"data_offsets":[8,8]}}`, 8},
		{`{}`, 0},
		{"{\"k\\u00e9\\ud83d\\ude00\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}\x00\x00", 1},
		{`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]`, 8},
		{`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12},
		{`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12},
		{`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, 1},
		{`{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, 2},
		{`{"a":{"dtype":"F6_E2M3","shape":[2,4],"data_offsets":[0,6]},"b":{"dtype":"F8_E4M3FNUZ","shape":[1],"data_offsets":[6,7]}}`, 7},
		{`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}}`, 1},
		{`{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,99999999999999999999]}}`, 1},
		{`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2},
	}
	for _, s := range seeds {
		f.Add([]byte(s.header), s.dataLen, int8(0))
	}
	f.Add([]byte(`{}`), uint16(0), int8(-2))
	f.Add([]byte(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`), uint16(1), int8(1))

	f.Fuzz(func(t *testing.T, header []byte, dataLen uint16, lenDelta int8) {
		img, fileSize := fuzzImage(header, dataLen, lenDelta)
		n, err := HeaderLen(img[:PrefixLen], fileSize)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("HeaderLen error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if n <= 0 || n > MaxHeaderLen || PrefixLen+n > fileSize {
			t.Fatalf("HeaderLen accepted %d for a %d-byte file", n, fileSize)
		}
		// A prefix larger than the header but within the file makes the
		// header run into the data section, which is all zero bytes.
		if extra := PrefixLen + n - int64(len(img)); extra > 0 {
			img = append(img, make([]byte, extra)...)
		}
		hdr := img[PrefixLen : PrefixLen+n]
		h, err := Parse(hdr, fileSize)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error %v does not wrap ErrInvalid", err)
			}
			if h != nil {
				t.Fatalf("Parse returned a header with error %v", err)
			}
			return
		}
		checkInvariants(t, h, hdr, fileSize)
	})
}

func checkInvariants(t *testing.T, h *Header, hdr []byte, fileSize int64) {
	t.Helper()
	if h.DataOffset != PrefixLen+int64(len(hdr)) {
		t.Fatalf("DataOffset %d, header is %d bytes", h.DataOffset, len(hdr))
	}
	dataLen := fileSize - h.DataOffset
	var end int64
	for i, ts := range h.Tensors {
		if i > 0 && compareTensors(h.Tensors[i-1], ts) >= 0 {
			t.Fatalf("tensors %d and %d out of order: %+v, %+v", i-1, i, h.Tensors[i-1], ts)
		}
		if ts.Begin != end || ts.End < ts.Begin {
			t.Fatalf("tensor %d %+v does not continue from %d", i, ts, end)
		}
		end = ts.End
		bits, ok := ts.DType.Bits()
		if !ok {
			t.Fatalf("accepted unknown dtype %q", ts.DType)
		}
		// Counted in big.Int so that the oracle cannot share an
		// overflow with the code it checks.
		want := big.NewInt(int64(bits))
		for _, d := range ts.Shape {
			if d < 0 {
				t.Fatalf("negative dim in %+v", ts)
			}
			want.Mul(want, big.NewInt(d))
		}
		var rem big.Int
		want.QuoRem(want, big.NewInt(8), &rem)
		if rem.Sign() != 0 {
			t.Fatalf("tensor %+v does not end on a byte boundary", ts)
		}
		if !want.IsInt64() || want.Int64() != ts.Bytes() {
			t.Fatalf("tensor %+v: %d bytes by dtype and shape, %d by offsets", ts, want, ts.Bytes())
		}
	}
	if end != dataLen {
		t.Fatalf("tensors end at %d, data section is %d bytes", end, dataLen)
	}

	// The oracle. NUL padding is not JSON whitespace, so strip it first.
	trimmed := bytes.TrimRight(hdr, " \t\r\n\x00")
	var top map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &top); err != nil {
		t.Fatalf("Parse accepted a header encoding/json rejects: %v\n%q", err, hdr)
	}
	keys := len(h.Tensors)
	if h.Metadata != nil {
		keys++
		var md map[string]string
		if err := json.Unmarshal(top[metadataKey], &md); err != nil || len(md) != len(h.Metadata) {
			t.Fatalf("metadata %v, encoding/json says %v (%v)", h.Metadata, md, err)
		}
		for k, v := range h.Metadata {
			if md[k] != v {
				t.Fatalf("metadata[%q] = %q, encoding/json says %q", k, v, md[k])
			}
		}
	}
	if len(top) != keys {
		t.Fatalf("%d top-level keys, encoding/json sees %d", keys, len(top))
	}
	for _, ts := range h.Tensors {
		raw, ok := top[ts.Name]
		if !ok {
			t.Fatalf("tensor %q not among encoding/json's keys", ts.Name)
		}
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int64 `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("tensor %q: encoding/json: %v", ts.Name, err)
		}
		if DType(e.DType) != ts.DType || !slices.Equal(e.Shape, ts.Shape) || len(e.Offsets) != 2 ||
			e.Offsets[0] != ts.Begin || e.Offsets[1] != ts.End {
			t.Fatalf("tensor %+v, encoding/json reads %+v", ts, e)
		}
	}
}
