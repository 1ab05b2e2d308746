// Package safetensors parses and validates SafeTensors headers.
//
// A SafeTensors file is an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON mapping tensor names to {dtype, shape, data_offsets} (plus an
// optional "__metadata__" map of strings), then the data section: the tensors'
// bytes packed back to back. Offsets in the JSON are relative to the data
// section, which starts at file offset 8+N.
package safetensors

import "errors"

// MaxHeaderLen bounds the JSON header, as the reference implementation does.
const MaxHeaderLen = 100 << 20

// PrefixLen is the size of the little-endian header-length prefix.
const PrefixLen = 8

// ErrInvalid is wrapped by every validation error: errors.Is(err, ErrInvalid).
var ErrInvalid = errors.New("invalid safetensors file")

// DType is a SafeTensors dtype name such as "F32" or "BF16".
type DType string

// Tensor is one validated header entry. Begin and End are relative to the
// data section.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Begin int64
	End   int64
}

// Bytes is the tensor's size in bytes.
func (t Tensor) Bytes() int64 { return t.End - t.Begin }

// Header is a parsed and validated header.
type Header struct {
	// DataOffset is the absolute file offset of the data section (8 + N).
	DataOffset int64
	// Tensors sorted by Begin; together they cover the data section exactly.
	Tensors []Tensor
	// Metadata is the optional "__metadata__" map.
	Metadata map[string]string
}
