package main

import (
	"strconv"
	"unicode/utf8"
)

// appendFiles appends ms_stream_metadata's document for files: what
// encoding/json makes of {"files": files}, less the HTML escapes (<, > and &
// as themselves, which JSON allows). Written by hand because this is on the
// path to a stream's first tensor: json.Marshal's first call in a process
// builds its reflection encoders for these types, 0.1-0.2 ms of a
// few-millisecond start (bench/first_tensor.py), and every call costs
// several times this.
func appendFiles(b []byte, files []fileJSON) []byte {
	b = append(b, `{"files":`...)
	b = appendList(b, files, appendFile)
	return append(b, '}')
}

// appendList appends items as a JSON array, a nil slice as null (as
// encoding/json writes them).
func appendList[T any](b []byte, items []T, appendItem func([]byte, *T) []byte) []byte {
	if items == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendItem(b, &items[i])
	}
	return append(b, ']')
}

func appendInt(b []byte, v *int64) []byte { return strconv.AppendInt(b, *v, 10) }

func appendFile(b []byte, f *fileJSON) []byte {
	b = append(b, `{"uri":`...)
	b = appendString(b, f.URI)
	b = append(b, `,"data_offset":`...)
	b = strconv.AppendInt(b, f.DataOffset, 10)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, f.Size, 10)
	b = append(b, `,"strategy":`...)
	b = appendString(b, f.Strategy)
	b = append(b, `,"tensors":`...)
	b = appendList(b, f.Tensors, appendTensor)
	if v := f.Verify; v != nil {
		b = append(b, `,"verify":`...)
		b = appendVerify(b, v)
	}
	return append(b, '}')
}

func appendTensor(b []byte, t *tensorJSON) []byte {
	b = append(b, `{"name":`...)
	b = appendString(b, t.Name)
	b = append(b, `,"dtype":`...)
	b = appendString(b, t.DType)
	b = append(b, `,"shape":`...)
	b = appendList(b, t.Shape, appendInt)
	b = append(b, `,"offsets":`...)
	b = appendList(b, t.Offsets[:], appendInt)
	return append(b, '}')
}

// appendVerify writes the fields that are set, as omitempty does.
func appendVerify(b []byte, v *verifyJSON) []byte {
	b = append(b, '{')
	first := true
	field := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, name)
		b = append(b, ':')
	}
	for _, kv := range [...]struct{ name, value string }{
		{"algorithm", v.Algorithm}, {"source", v.Source}, {"expected", v.Expected}, {"skipped", v.Skipped},
		{"sidecar", v.Sidecar}, {"sidecar_algorithm", v.SidecarAlgorithm},
	} {
		if kv.value != "" {
			field(kv.name)
			b = appendString(b, kv.value)
		}
	}
	for _, kv := range [...]struct {
		name  string
		value int
	}{{"sidecar_entries", v.SidecarEntries}, {"sidecar_uncovered", v.SidecarUncovered}} {
		if kv.value != 0 {
			field(kv.name)
			b = strconv.AppendInt(b, int64(kv.value), 10)
		}
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Like encoding/json, it writes
// invalid UTF-8 as U+FFFD and escapes U+2028 and U+2029 (which JavaScript
// does not allow in a string literal).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
