package safetensors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

// allDTypes is safetensors 0.8's Dtype enum with each element's width in
// bits, written out independently of lookupDType so that each checks the
// other.
var allDTypes = []struct {
	name DType
	bits int
}{
	{"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6},
	{"U8", 8}, {"I8", 8}, {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
	{"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16},
	{"I32", 32}, {"U32", 32}, {"F32", 32},
	{"C64", 64}, {"F64", 64}, {"I64", 64}, {"U64", 64},
}

func TestDTypeBitsAndSize(t *testing.T) {
	if len(allDTypes) != 22 {
		t.Fatalf("safetensors 0.8 has 22 dtypes, the table lists %d", len(allDTypes))
	}
	for _, d := range allDTypes {
		t.Run(string(d.name), func(t *testing.T) {
			if got, ok := d.name.Bits(); !ok || got != d.bits {
				t.Errorf("Bits() = %d, %v; want %d, true", got, ok, d.bits)
			}
			size, ok := d.name.Size()
			if d.bits%8 == 0 {
				if !ok || size != d.bits/8 {
					t.Errorf("Size() = %d, %v; want %d, true", size, ok, d.bits/8)
				}
			} else if ok {
				t.Errorf("Size() = %d, true for a sub-byte dtype", size)
			}
		})
	}
	for _, d := range []DType{"", "f32", "F32 ", "F128", "C128", "bool", "F8_E4M3FN", "F4_E2M1", "ALIEN_TYPE_128"} {
		if got, ok := d.Bits(); ok {
			t.Errorf("%q.Bits() = %d, true; want unknown", d, got)
		}
		if got, ok := d.Size(); ok {
			t.Errorf("%q.Size() = %d, true; want unknown", d, got)
		}
	}
}

func TestDTypeByteLen(t *testing.T) {
	tests := []struct {
		dtype DType
		count int64
		want  int64
		ok    bool
	}{
		{"F32", 0, 0, true},
		{"F32", 6, 24, true},
		{"C64", 3, 24, true},
		{"BOOL", 3, 3, true},
		// Two F4 values share a byte; an odd count ends mid-byte.
		{"F4", 0, 0, true},
		{"F4", 1, 0, false},
		{"F4", 2, 1, true},
		{"F4", 3, 0, false},
		{"F4", 12, 6, true},
		// Four F6 values fill three bytes.
		{"F6_E2M3", 4, 3, true},
		{"F6_E3M2", 8, 6, true},
		{"F6_E2M3", 1, 0, false},
		{"F6_E3M2", 2, 0, false},
		{"F6_E2M3", 3, 0, false},
		{"U64", math.MaxInt64 / 64, math.MaxInt64 / 64 * 8, true},
		{"U64", math.MaxInt64/64 + 1, 0, false},
		{"F4", -2, 0, false},
		{"ALIEN", 1, 0, false},
	}
	for _, tc := range tests {
		got, ok := tc.dtype.ByteLen(tc.count)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s.ByteLen(%d) = %d, %v; want %d, %v", tc.dtype, tc.count, got, ok, tc.want, tc.ok)
		}
	}
}

func prefix(n uint64) []byte {
	return binary.LittleEndian.AppendUint64(nil, n)
}

func TestHeaderLen(t *testing.T) {
	tests := []struct {
		name     string
		prefix   []byte
		fileSize int64
		want     int64
		errHas   string
	}{
		{"ok", prefix(10), 18, 10, ""},
		{"ok with data", prefix(10), 1000, 10, ""},
		{"ok at limit", prefix(MaxHeaderLen), 8 + MaxHeaderLen, MaxHeaderLen, ""},
		{"longer prefix slice", append(prefix(2), 'x', 'y'), 10, 2, ""},
		{"empty file", nil, 0, 0, "file is empty"},
		{"negative size", prefix(2), -1, 0, "negative file size"},
		{"short file", prefix(1)[:3], 3, 0, "file is 3 bytes, shorter than the 8-byte header length"},
		{"short prefix", prefix(1)[:5], 100, 0, "prefix is 5 bytes"},
		{"zero length", prefix(0), 100, 0, "header length is 0"},
		{"over limit", prefix(MaxHeaderLen + 1), 1 << 40, 0, "header length 104857601 exceeds limit of 104857600 bytes (100 MiB)"},
		{"top bit set", prefix(1 << 63), 1 << 40, 0, "exceeds limit"},
		{"max uint64", prefix(math.MaxUint64), 1 << 40, 0, "exceeds limit"},
		{"past end", prefix(100), 50, 0, "file is truncated: header length 100 runs past the end of the 50-byte file"},
		{"past end by one", prefix(43), 50, 0, "runs past the end"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := HeaderLen(tc.prefix, tc.fileSize)
			if tc.errHas == "" {
				if err != nil || got != tc.want {
					t.Fatalf("HeaderLen = %d, %v; want %d, nil", got, err, tc.want)
				}
				return
			}
			checkErr(t, err, tc.errHas)
		})
	}
}

func checkErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %q does not wrap ErrInvalid", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// ent formats one tensor entry.
func ent(name, dtype, shape string, begin, end int64) string {
	return fmt.Sprintf(`%q:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, name, dtype, shape, begin, end)
}

func obj(entries ...string) string { return "{" + strings.Join(entries, ",") + "}" }

// parse runs Parse on a header followed by dataLen bytes of data.
func parse(header string, dataLen int64) (*Header, error) {
	return Parse([]byte(header), PrefixLen+int64(len(header))+dataLen)
}

type wantTensor struct {
	name       string
	dtype      DType
	shape      []int64
	begin, end int64
}

func TestParseValid(t *testing.T) {
	// Every dtype, packed in declaration order, with a [2,4] shape: eight
	// elements end on a byte boundary even at 4 and 6 bits.
	var every []string
	var everyWant []wantTensor
	var off int64
	for _, d := range allDTypes {
		n := int64(8 * d.bits / 8)
		every = append(every, ent("t_"+string(d.name), string(d.name), "[2,4]", off, off+n))
		everyWant = append(everyWant, wantTensor{"t_" + string(d.name), d.name, []int64{2, 4}, off, off + n})
		off += n
	}

	tests := []struct {
		name     string
		header   string
		dataLen  int64
		want     []wantTensor
		metadata map[string]string
	}{
		{
			name:    "empty object, empty data",
			header:  `{}`,
			dataLen: 0,
		},
		{
			name:     "metadata only",
			header:   `{"__metadata__":{"format":"pt"}}`,
			metadata: map[string]string{"format": "pt"},
		},
		{
			name:     "empty metadata",
			header:   obj(`"__metadata__":{}`, ent("a", "U8", "[1]", 0, 1)),
			dataLen:  1,
			metadata: map[string]string{},
			want:     []wantTensor{{"a", "U8", []int64{1}, 0, 1}},
		},
		{
			name:    "every dtype",
			header:  obj(every...),
			dataLen: off,
			want:    everyWant,
		},
		{
			// safetensors.torch.save_file writes a torch [2,3]
			// float4_e2m1fn_x2 tensor as F4 [2,6] in 6 bytes.
			name:    "F4 as safetensors writes it",
			header:  obj(ent("w", "F4", "[2,6]", 0, 6)),
			dataLen: 6,
			want:    []wantTensor{{"w", "F4", []int64{2, 6}, 0, 6}},
		},
		{
			// An odd last dimension is fine for the format as long as
			// the total ends on a byte boundary (torch is another matter).
			name:    "F4 with an odd last dim but whole bytes",
			header:  obj(ent("w", "F4", "[2,3]", 0, 3)),
			dataLen: 3,
			want:    []wantTensor{{"w", "F4", []int64{2, 3}, 0, 3}},
		},
		{
			name:    "F6 among other tensors, zero-size F4",
			header:  obj(ent("a", "F32", "[1]", 0, 4), ent("f6", "F6_E3M2", "[2,4]", 4, 10), ent("z", "F4", "[0,3]", 10, 10), ent("b", "U8", "[1]", 10, 11)),
			dataLen: 11,
			want: []wantTensor{
				{"a", "F32", []int64{1}, 0, 4},
				{"f6", "F6_E3M2", []int64{2, 4}, 4, 10},
				{"z", "F4", []int64{0, 3}, 10, 10},
				{"b", "U8", []int64{1}, 10, 11},
			},
		},
		{
			name:    "0-d tensor",
			header:  obj(ent("scalar", "F32", "[]", 0, 4)),
			dataLen: 4,
			want:    []wantTensor{{"scalar", "F32", []int64{}, 0, 4}},
		},
		{
			name:    "zero-size tensors at start, middle, end, sorted by name at one offset",
			header:  obj(ent("z_end", "F32", "[0]", 8, 8), ent("b", "F32", "[1]", 4, 8), ent("z2", "F32", "[0,5]", 4, 4), ent("a", "F32", "[1]", 0, 4), ent("z1", "BF16", "[3,0]", 4, 4), ent("z0", "U8", "[0]", 0, 0)),
			dataLen: 8,
			want: []wantTensor{
				{"z0", "U8", []int64{0}, 0, 0},
				{"a", "F32", []int64{1}, 0, 4},
				{"z1", "BF16", []int64{3, 0}, 4, 4},
				{"z2", "F32", []int64{0, 5}, 4, 4},
				{"b", "F32", []int64{1}, 4, 8},
				{"z_end", "F32", []int64{0}, 8, 8},
			},
		},
		{
			name:    "only zero-size tensors, empty data",
			header:  obj(ent("b", "F32", "[0]", 0, 0), ent("a", "F64", "[0,0]", 0, 0)),
			dataLen: 0,
			want:    []wantTensor{{"a", "F64", []int64{0, 0}, 0, 0}, {"b", "F32", []int64{0}, 0, 0}},
		},
		{
			name:    "out-of-order keys sorted by offset",
			header:  obj(ent("second", "I64", "[1]", 8, 16), ent("first", "I64", "[1]", 0, 8)),
			dataLen: 16,
			want:    []wantTensor{{"first", "I64", []int64{1}, 0, 8}, {"second", "I64", []int64{1}, 8, 16}},
		},
		{
			name:     "space padding to 8 bytes, metadata, whitespace everywhere",
			header:   " {\n\t\"__metadata__\" : { \"a\" : \"1\" , \"b\":\"\\u00e9\\n\" } ,\r\n \"w\" : { \"shape\" : [ 2 , 2 ] , \"data_offsets\" : [ 0 , 8 ] , \"dtype\" : \"F16\" } }     ",
			dataLen:  8,
			metadata: map[string]string{"a": "1", "b": "é\n"},
			want:     []wantTensor{{"w", "F16", []int64{2, 2}, 0, 8}},
		},
		{
			name:    "NUL padding",
			header:  obj(ent("x", "U8", "[2]", 0, 2)) + "  \x00\x00\x00",
			dataLen: 2,
			want:    []wantTensor{{"x", "U8", []int64{2}, 0, 2}},
		},
		{
			name:    "escaped and non-ASCII names",
			header:  `{"a\"b\\c\/\u0041\ud83d\ude00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"名前.😀":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`,
			dataLen: 2,
			want:    []wantTensor{{"a\"b\\c/A😀", "U8", []int64{1}, 0, 1}, {"名前.😀", "U8", []int64{1}, 1, 2}},
		},
		{
			name:    "escaped field names",
			header:  `{"x":{"\u0064type":"U8","sh\u0061pe":[3],"data_offsets":[0,3]}}`,
			dataLen: 3,
			want:    []wantTensor{{"x", "U8", []int64{3}, 0, 3}},
		},
		{
			name:    "empty name",
			header:  obj(ent("", "U8", "[1]", 0, 1)),
			dataLen: 1,
			want:    []wantTensor{{"", "U8", []int64{1}, 0, 1}},
		},
		{
			name:    "large but exact offsets",
			header:  obj(ent("big", "U8", "[1099511627776]", 0, 1<<40)),
			dataLen: 1 << 40,
			want:    []wantTensor{{"big", "U8", []int64{1 << 40}, 0, 1 << 40}},
		},
		{
			name:    "overflowing intermediate product rescued by nothing: zero dim first",
			header:  obj(ent("z", "F64", "[0,4611686018427387904,4611686018427387904]", 0, 0)),
			dataLen: 0,
			want:    []wantTensor{{"z", "F64", []int64{0, 1 << 62, 1 << 62}, 0, 0}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parse(tc.header, tc.dataLen)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if want := int64(PrefixLen + len(tc.header)); h.DataOffset != want {
				t.Errorf("DataOffset = %d, want %d", h.DataOffset, want)
			}
			if len(h.Tensors) != len(tc.want) {
				t.Fatalf("got %d tensors, want %d: %+v", len(h.Tensors), len(tc.want), h.Tensors)
			}
			for i, w := range tc.want {
				g := h.Tensors[i]
				if g.Name != w.name || g.DType != w.dtype || !slices.Equal(g.Shape, w.shape) || g.Begin != w.begin || g.End != w.end {
					t.Errorf("tensor %d = %+v, want %+v", i, g, w)
				}
				if g.Shape == nil {
					t.Errorf("tensor %q: Shape is nil, want an empty slice for 0-d", g.Name)
				}
			}
			if tc.metadata == nil {
				if h.Metadata != nil {
					t.Errorf("Metadata = %v, want nil", h.Metadata)
				}
			} else if h.Metadata == nil || !mapsEqual(h.Metadata, tc.metadata) {
				t.Errorf("Metadata = %#v, want %#v", h.Metadata, tc.metadata)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestParseErrors(t *testing.T) {
	good := ent("w", "F32", "[2]", 0, 8)
	tests := []struct {
		name    string
		header  string
		dataLen int64
		want    []string
	}{
		// Framing.
		{"empty header", "", 0, []string{"header is empty"}},
		{"only whitespace", "   ", 0, []string{"only whitespace"}},
		{"invalid UTF-8", "{\"w\xff\":1}", 0, []string{"not valid UTF-8", "offset 3"}},
		{"UTF-8 surrogate bytes", "{\"\xed\xa0\x80\":1}", 0, []string{"not valid UTF-8"}},
		{"not JSON", "hello", 0, []string{"not valid JSON", "'h'"}},
		{"top level array", `[1,2]`, 0, []string{"header is an array, want a JSON object"}},
		{"top level string", `"x"`, 0, []string{"header is a string"}},
		{"top level number", `12`, 0, []string{"header is a number"}},
		{"top level null", `null`, 0, []string{"header is null"}},
		{"truncated object", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]`, 8, []string{"unexpected end of input"}},
		{"truncated string", `{"w`, 0, []string{"unexpected end of input"}},
		{"missing colon", `{"w" {}}`, 0, []string{"expected ':'"}},
		{"missing comma", "{" + good + " " + ent("b", "F32", "[2]", 8, 16) + "}", 16, []string{"expected ',' or '}'"}},
		{"trailing comma", "{" + good + ",}", 8, []string{"expected a string key"}},
		{"trailing comma in shape", obj(ent("w", "F32", "[2,]", 0, 8)), 8, []string{"not valid JSON"}},
		{"unquoted key", `{w:1}`, 0, []string{"expected a string key"}},
		{"trailing garbage", obj(good) + "x", 8, []string{"unexpected 'x'", "padding"}},
		{"second object", obj(good) + " {}", 8, []string{"padding"}},
		{"control char in name", "{\"a\tb\":{}}", 0, []string{"control character"}},
		{"bad escape", `{"a\qb":{}}`, 0, []string{`bad escape \q`}},
		{"bad unicode escape", `{"a\u12g4":{}}`, 0, []string{`bad \u escape`}},
		{"lone high surrogate", `{"a\ud83d":{}}`, 0, []string{"unpaired UTF-16 surrogate"}},
		{"lone low surrogate", `{"a\ude00x":{}}`, 0, []string{"unpaired UTF-16 surrogate"}},
		{"high surrogate then non-low", `{"a\ud83d\u0041":{}}`, 0, []string{"unpaired UTF-16 surrogate"}},
		{"header shorter than fileSize demands", `{}`, -3, []string{"the file is only"}},

		// Keys.
		{"duplicate tensor", obj(good, ent("w", "F32", "[2]", 8, 16)), 16, []string{`duplicate key "w"`}},
		{"duplicate via escape", `{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"\u0077":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2, []string{`duplicate key "w"`}},
		{"duplicate metadata", `{"__metadata__":{},"__metadata__":{}}`, 0, []string{`duplicate key "__metadata__"`}},
		{"duplicate metadata key", `{"__metadata__":{"a":"1","a":"2"}}`, 0, []string{"__metadata__", `duplicate key "a"`}},

		// Metadata.
		{"metadata not object", `{"__metadata__":"x"}`, 0, []string{"__metadata__ is a string, want an object of strings"}},
		{"metadata null", `{"__metadata__":null}`, 0, []string{"__metadata__ is null"}},
		{"metadata number value", `{"__metadata__":{"n":1}}`, 0, []string{`__metadata__["n"] is a number, want a string`}},
		{"metadata nested", `{"__metadata__":{"n":{}}}`, 0, []string{`__metadata__["n"] is an object`}},

		// Entry shape.
		{"entry not object", `{"w":[1]}`, 0, []string{`tensor "w" is an array, want an object`}},
		{"entry string", `{"w":"F32"}`, 0, []string{`tensor "w" is a string`}},
		{"entry bad literal", `{"w":tru}`, 0, []string{"not valid JSON"}},
		{"missing dtype", `{"w":{"shape":[2],"data_offsets":[0,8]}}`, 8, []string{`tensor "w"`, `missing field "dtype"`}},
		{"missing shape", `{"w":{"dtype":"F32","data_offsets":[0,8]}}`, 8, []string{`tensor "w"`, `missing field "shape"`}},
		{"missing offsets", `{"w":{"dtype":"F32","shape":[2]}}`, 8, []string{`tensor "w"`, `missing field "data_offsets"`}},
		{"empty entry", `{"w":{}}`, 0, []string{`tensor "w"`, `missing field "dtype"`}},
		{"unknown field", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}`, 8, []string{`tensor "w"`, `unknown field "extra"`}},
		{"duplicate field", `{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8, []string{`tensor "w"`, `duplicate field "dtype"`}},

		// dtype.
		{"unknown dtype", obj(ent("w", "ALIEN_TYPE_128", "[1]", 0, 4)), 4, []string{`tensor "w": Unsupported dtype "ALIEN_TYPE_128"`}},
		{"lowercase dtype", obj(ent("w", "f32", "[2]", 0, 8)), 8, []string{`Unsupported dtype "f32"`}},
		{"torch name as dtype", obj(ent("w", "float4_e2m1fn_x2", "[2]", 0, 1)), 1, []string{`Unsupported dtype "float4_e2m1fn_x2"`}},
		{"dtype not string", `{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, 8, []string{`tensor "w": dtype is a number, want a string`}},

		// shape.
		{"shape not array", obj(ent("w", "F32", "2", 0, 8)), 8, []string{`tensor "w": shape is a number, want an array`}},
		{"shape null", obj(ent("w", "F32", "null", 0, 8)), 8, []string{`tensor "w": shape is null`}},
		{"shape negative", obj(ent("w", "F32", "[2,-1]", 0, 8)), 8, []string{`tensor "w": shape[1] is -1, want a non-negative integer`}},
		{"shape minus zero", obj(ent("w", "F32", "[-0]", 0, 0)), 0, []string{`shape[0] is -0`}},
		{"shape fraction", obj(ent("w", "F32", "[1.5]", 0, 8)), 8, []string{`tensor "w": shape[0] is 1.5, want an integer`}},
		{"shape integral fraction", obj(ent("w", "F32", "[2.0]", 0, 8)), 8, []string{`shape[0] is 2.0, want an integer`}},
		{"shape exponent", obj(ent("w", "F32", "[1e3]", 0, 4000)), 4000, []string{`shape[0] is 1e3, want an integer`}},
		{"shape string element", obj(ent("w", "F32", `["2"]`, 0, 8)), 8, []string{`tensor "w": shape[0] is a string, want a non-negative integer`}},
		{"shape nested", obj(ent("w", "F32", `[[2]]`, 0, 8)), 8, []string{`shape[0] is an array`}},
		{"shape overflow int64", obj(ent("w", "U8", "[9223372036854775808]", 0, 8)), 8, []string{`tensor "w": shape[0] is 9223372036854775808, which overflows int64`}},
		{"shape overflow uint64", obj(ent("w", "U8", "[18446744073709551617]", 0, 1)), 1, []string{"overflows int64"}},
		{"shape huge literal shortened", obj(ent("w", "U8", "["+strings.Repeat("9", 200)+"]", 0, 1)), 1, []string{"overflows int64", "..."}},
		{"shape leading zero", obj(ent("w", "U8", "[01]", 0, 1)), 1, []string{"not valid JSON"}},
		{"shape bad number", obj(ent("w", "U8", "[1.]", 0, 1)), 1, []string{"not valid JSON", "expected a digit"}},
		{"shape lone minus", obj(ent("w", "U8", "[-]", 0, 1)), 1, []string{"not valid JSON"}},
		{"shape product overflow", obj(ent("w", "U8", "[4294967296,4294967296]", 0, 1)), 1, []string{`tensor "w"`, "more elements than fit in int64"}},
		{"shape product overflow before zero", obj(ent("w", "U8", "[4294967296,4294967296,0]", 0, 0)), 0, []string{`tensor "w"`, "more elements than fit in int64"}},
		{"byte size overflow", obj(ent("w", "F64", "[2305843009213693952]", 0, 1)), 1, []string{`tensor "w"`, "more bytes than fit in int64"}},
		{"byte size wraps to 0", obj(ent("w", "F64", "[4611686018427387904,4]", 0, 0)), 0, []string{`tensor "w"`, "more elements than fit"}},

		// data_offsets.
		{"offsets not array", `{"w":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}}`, 8, []string{`tensor "w": data_offsets is a string, want an array of two`}},
		{"offsets one element", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}`, 8, []string{`tensor "w": data_offsets has 1 elements, want 2`}},
		{"offsets empty", `{"w":{"dtype":"F32","shape":[0],"data_offsets":[]}}`, 0, []string{`data_offsets has 0 elements, want 2`}},
		{"offsets three", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,16]}}`, 16, []string{`tensor "w": data_offsets has more than 2 elements`}},
		{"offsets negative", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}`, 8, []string{`tensor "w": data_offsets[0] is -8`}},
		{"offsets fraction", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}}`, 8, []string{`tensor "w": data_offsets[1] is 8.5, want an integer`}},
		{"offsets overflow", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}`, 8, []string{`tensor "w": data_offsets[1] is 99999999999999999999, which overflows int64`}},
		{"offsets reversed", obj(ent("w", "F32", "[2]", 8, 0)), 8, []string{`tensor "w": data_offsets [8, 0] begin after end`}},

		// Size against dtype and shape.
		{"size too small", obj(ent("w", "F32", "[2,3]", 0, 20)), 20, []string{`tensor "w": Shape claims 24 bytes ([2, 3] x F32), but offsets reserve 20 bytes (data_offsets [0, 20])`}},
		{"reference wording", obj(ent("test_tensor", "F32", "[10]", 0, 4)), 4, []string{"Shape claims 40 bytes ([10] x F32), but offsets reserve 4 bytes"}},
		{"size too large", obj(ent("w", "BF16", "[4]", 0, 16)), 16, []string{`tensor "w"`, "Shape claims 8 bytes", "offsets reserve 16 bytes"}},
		{"0-d wrong size", obj(ent("s", "F64", "[]", 0, 4)), 4, []string{`tensor "s"`, "Shape claims 8 bytes ([] x F64)"}},
		{"zero-size with bytes", obj(ent("z", "F32", "[0]", 0, 4)), 4, []string{`tensor "z"`, "Shape claims 0 bytes"}},
		{"F4 counted in bytes, not nibbles", obj(ent("w", "F4", "[2,6]", 0, 12)), 12, []string{"Shape claims 6 bytes ([2, 6] x F4), but offsets reserve 12 bytes"}},
		{"F6 counted as 6 bits", obj(ent("w", "F6_E2M3", "[8]", 0, 8)), 8, []string{"Shape claims 6 bytes ([8] x F6_E2M3)"}},
		{"F4 odd count", obj(ent("w", "F4", "[3]", 0, 2)), 2, []string{`tensor "w": shape [3] x F4 is 3 elements of 4 bits, 12 bits in all, which does not end on a byte boundary`}},
		{"F4 scalar", obj(ent("w", "F4", "[]", 0, 0)), 0, []string{"1 elements of 4 bits", "byte boundary"}},
		{"F6 three values", obj(ent("w", "F6_E3M2", "[3]", 0, 2)), 2, []string{"18 bits in all", "byte boundary"}},
		{"F4 bits overflow", obj(ent("w", "F4", "[4611686018427387904]", 0, 0)), 0, []string{"more bytes than fit in int64"}},

		// Layout.
		{"gap at start", obj(ent("w", "F32", "[2]", 4, 12)), 12, []string{`first tensor "w" begins at byte 4`}},
		{"gap between", obj(ent("a", "F32", "[1]", 0, 4), ent("b", "F32", "[1]", 8, 12)), 12, []string{`gap between tensor "a" (ends at 4) and tensor "b" (begins at 8)`}},
		{"overlap", obj(ent("a", "F32", "[2]", 0, 8), ent("b", "F32", "[2]", 4, 12)), 12, []string{`tensor "a" [0,8) overlaps with next tensor "b" [4,12)`}},
		{"overlap, keys reversed", obj(ent("B", "U8", "[10]", 5, 15), ent("A", "U8", "[10]", 0, 10)), 15, []string{`tensor "A" [0,10) overlaps with next tensor "B" [5,15)`}},
		{"identical ranges", obj(ent("a", "F32", "[2]", 0, 8), ent("b", "F32", "[2]", 0, 8)), 8, []string{`tensor "a" [0,8) overlaps with next tensor "b" [0,8)`}},
		{"zero-size inside another", obj(ent("a", "F32", "[2]", 0, 8), ent("z", "F32", "[0]", 4, 4)), 8, []string{`tensor "a" [0,8) overlaps with next tensor "z" [4,4)`}},
		{"zero-size past the end", obj(ent("a", "F32", "[2]", 0, 8), ent("z", "F32", "[0]", 12, 12)), 8, []string{`gap between tensor "a" (ends at 8) and tensor "z" (begins at 12)`}},
		{"past the end", obj(ent("a", "F32", "[2]", 0, 8), ent("b", "F32", "[2]", 8, 16)), 12, []string{`file is truncated: tensor "b" ends at byte 16 of the data section but the file holds only 12 bytes`}},
		{"truncated file", obj(ent("a", "F32", "[2]", 0, 8)), 0, []string{"truncated", `tensor "a" ends at byte 8`, "holds only 0 bytes"}},
		{"trailing data", obj(ent("a", "F32", "[2]", 0, 8)), 10, []string{`2 extra trailing bytes after the last tensor "a"`}},
		{"no tensors but data", `{}`, 5, []string{"no tensors", "holds 5 extra bytes"}},
		{"metadata only but data", `{"__metadata__":{}}`, 5, []string{"no tensors", "holds 5 extra bytes"}},
		{"only zero-size but data", obj(ent("z", "F32", "[0]", 0, 0)), 3, []string{`3 extra trailing bytes after the last tensor "z"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parse(tc.header, tc.dataLen)
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want an error containing %q", h, tc.want)
			}
			if h != nil {
				t.Errorf("Parse returned a header along with error %v", err)
			}
			checkErr(t, err, tc.want...)
		})
	}
}

func TestParseOversizedHeader(t *testing.T) {
	_, err := Parse(make([]byte, MaxHeaderLen+1), 1<<40)
	checkErr(t, err, "exceeds limit")
}

// TestShapeCapped guards the shared dims slab: growing one tensor's shape
// must not write into the next tensor's.
func TestShapeCapped(t *testing.T) {
	h, err := parse(obj(ent("a", "U8", "[1,1]", 0, 1), ent("b", "U8", "[1,1]", 1, 2)), 2)
	if err != nil {
		t.Fatal(err)
	}
	_ = append(h.Tensors[0].Shape, 99)
	if !slices.Equal(h.Tensors[1].Shape, []int64{1, 1}) {
		t.Fatalf("appending to a's shape changed b's shape to %v", h.Tensors[1].Shape)
	}
}

// TestHeaderLenThenParse runs the two steps the way a reader does, on a
// file image written the way the reference writer writes it.
func TestHeaderLenThenParse(t *testing.T) {
	img := fileImage(obj(`"__metadata__":{"format":"pt"}`, ent("b", "F16", "[2,2]", 8, 16), ent("a", "F32", "[2]", 0, 8)), 16)
	n, err := HeaderLen(img[:PrefixLen], int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if (PrefixLen+n)%8 != 0 {
		t.Fatalf("fileImage did not pad: data offset %d", PrefixLen+n)
	}
	h, err := Parse(img[PrefixLen:PrefixLen+n], int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if h.DataOffset != PrefixLen+n || len(h.Tensors) != 2 || h.Tensors[0].Name != "a" || h.Metadata["format"] != "pt" {
		t.Fatalf("unexpected header %+v", h)
	}
}

// fileImage lays out a file as the reference writer does: prefix, header
// padded with spaces to an 8-byte boundary, then dataLen zero bytes.
func fileImage(header string, dataLen int) []byte {
	for (PrefixLen+len(header))%8 != 0 {
		header += " "
	}
	img := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	img = append(img, header...)
	return append(img, make([]byte, dataLen)...)
}

// bigHeader builds a header shaped like a large real checkpoint: n tensors
// with layer-style names, 1- and 2-d shapes, and a metadata entry.
func bigHeader(n int) (header []byte, dataLen int64) {
	var b strings.Builder
	b.WriteString(`{"__metadata__":{"format":"pt"}`)
	var off int64
	for i := 0; i < n; i++ {
		var shape string
		var size int64
		switch i % 4 {
		case 0:
			shape, size = "[4096,4096]", 4096*4096*2
		case 1:
			shape, size = "[4096]", 4096*2
		case 2:
			shape, size = "[11008,4096]", 11008*4096*2
		default:
			shape, size = "[128,64]", 128*64*2
		}
		fmt.Fprintf(&b, `,"model.layers.%d.block.%d.self_attn.proj.weight":{"dtype":"BF16","shape":%s,"data_offsets":[%d,%d]}`,
			i/8, i%8, shape, off, off+size)
		off += size
	}
	b.WriteString("}")
	return []byte(b.String()), off
}

func TestParseBig(t *testing.T) {
	header, dataLen := bigHeader(100_000)
	h, err := Parse(header, PrefixLen+int64(len(header))+dataLen)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Tensors) != 100_000 {
		t.Fatalf("got %d tensors", len(h.Tensors))
	}
}

func TestLookupDTypeNoAlloc(t *testing.T) {
	b := []byte("BF16")
	if n := testing.AllocsPerRun(100, func() { lookupDType(b) }); n != 0 {
		t.Fatalf("lookupDType allocates %v times", n)
	}
}

func BenchmarkParse100k(b *testing.B) {
	header, dataLen := bigHeader(100_000)
	fileSize := PrefixLen + int64(len(header)) + dataLen
	b.SetBytes(int64(len(header)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(header, fileSize); err != nil {
			b.Fatal(err)
		}
	}
}
