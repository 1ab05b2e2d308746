// Package sttest writes SafeTensors files for tests and examples.
package sttest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
)

// Tensor is one tensor to write: its bytes are random unless Data is set.
type Tensor struct {
	Name  string
	DType string
	Shape []int64
	Data  []byte
}

var sizes = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}

// Bytes is the byte size of t.
func (t Tensor) Bytes() int64 {
	n := sizes[t.DType]
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Write writes tensors, in the given order, to path and returns each
// tensor's bytes by name. The header is padded with spaces to 8 bytes.
func Write(path string, tensors []Tensor, seed uint64) (map[string][]byte, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	header := map[string]any{}
	want := map[string][]byte{}
	var off int64
	var data []byte
	for _, t := range tensors {
		b := t.Data
		if b == nil {
			b = make([]byte, t.Bytes())
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
		}
		if t.DType == "BOOL" {
			for i := range b {
				b[i] &= 1
			}
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = map[string]any{"dtype": t.DType, "shape": shape,
			"data_offsets": []int64{off, off + int64(len(b))}}
		want[t.Name] = b
		data = append(data, b...)
		off += int64(len(b))
	}
	h, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	out = append(out, data...)
	return want, os.WriteFile(path, out, 0o644)
}

// Random returns n tensors of assorted dtypes and shapes, some empty and
// some 0-d, at most maxElems elements each.
func Random(rng *rand.Rand, prefix string, n int, maxElems int64) []Tensor {
	dtypes := make([]string, 0, len(sizes))
	for d := range sizes {
		dtypes = append(dtypes, d)
	}
	sort.Strings(dtypes)
	out := make([]Tensor, n)
	for i := range out {
		t := Tensor{Name: fmt.Sprintf("%s.%d", prefix, i), DType: dtypes[rng.IntN(len(dtypes))]}
		switch rng.IntN(8) {
		case 0: // 0-d
		case 1: // empty
			t.Shape = []int64{rng.Int64N(4), 0}
		default:
			rows := 1 + rng.Int64N(64)
			t.Shape = []int64{rows, 1 + rng.Int64N(max(1, maxElems/rows))}
		}
		out[i] = t
	}
	return out
}
