package main

import (
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// decoded is what a JSON reader (Python's json.loads, here encoding/json)
// makes of b, which must be UTF-8: Python decodes it before it parses it.
func decoded(t *testing.T, b []byte) any {
	t.Helper()
	if !utf8.Valid(b) {
		t.Fatalf("not UTF-8: %q", b)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

func TestAppendFilesReadsAsEncodingJSON(t *testing.T) {
	odd := "q\"b\\s/\n\r\t\b\f\x00\x01\x1f\x7f<>&é漢\u2028\u2029😀\xff\xc3(end"
	for _, tc := range []struct {
		name  string
		files []fileJSON
	}{
		{"no files", nil},
		{"empty list", []fileJSON{}},
		{"tensors nil and empty", []fileJSON{{URI: "/a"}, {URI: "/b", Tensors: []tensorJSON{}}}},
		{"a checkpoint", []fileJSON{{
			URI: "s3://bucket/model-00001.safetensors", DataOffset: 4096, Size: 1 << 40, Strategy: "mmap",
			Tensors: []tensorJSON{
				{Name: "model.embed_tokens.weight", DType: "BF16", Shape: []int64{128256, 4096}, Offsets: [2]int64{0, 1 << 30}},
				{Name: "scalar", DType: "F32", Shape: []int64{}, Offsets: [2]int64{1 << 30, 1<<30 + 4}},
				{Name: "nil shape", DType: "I64", Offsets: [2]int64{-1, 9223372036854775807}},
			},
		}}},
		{"odd strings everywhere", []fileJSON{{
			URI: odd, Strategy: odd,
			Tensors: []tensorJSON{{Name: odd, DType: odd, Shape: []int64{0, -3}}},
			Verify:  &verifyJSON{Algorithm: "crc32c", Source: odd, Expected: odd, Skipped: odd, Sidecar: odd, SidecarAlgorithm: odd, SidecarEntries: 3, SidecarUncovered: -1},
		}}},
		{"verify partly set", []fileJSON{{URI: "/x", Verify: &verifyJSON{Skipped: "no checksum"}}}},
		{"verify empty", []fileJSON{{URI: "/x", Verify: &verifyJSON{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := json.Marshal(struct {
				Files []fileJSON `json:"files"`
			}{tc.files})
			if err != nil {
				t.Fatal(err)
			}
			got := appendFiles(nil, tc.files)
			if g, w := decoded(t, got), decoded(t, want); !reflect.DeepEqual(g, w) {
				t.Errorf("appendFiles reads as\n%#v\nencoding/json's as\n%#v\n(%s)", g, w, got)
			}
		})
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\\x00\x1f", "\xff\xfe", "\u2028\u2029", "a\xc3", "😀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		var got, ref string
		if b := appendString(nil, s); !utf8.Valid(b) {
			t.Fatalf("%q: not UTF-8: %q", s, b)
		}
		if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
			t.Fatalf("%q: not a JSON string: %v (%s)", s, err, appendString(nil, s))
		}
		if err := json.Unmarshal(want, &ref); err != nil {
			t.Fatal(err)
		}
		if got != ref {
			t.Fatalf("%q reads back as %q, encoding/json's as %q", s, got, ref)
		}
	})
}
