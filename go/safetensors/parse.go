package safetensors

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// metadataKey names the one top-level entry that is not a tensor.
const metadataKey = "__metadata__"

// invalidf builds a validation error. Every error this package returns goes
// through here so that callers can rely on errors.Is(err, ErrInvalid).
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// HeaderLen decodes the length prefix and checks it against the file size
// before anything reads or allocates the header, so that a corrupt or hostile
// prefix cannot make the caller read past the file or allocate gigabytes.
func HeaderLen(prefix []byte, fileSize int64) (int64, error) {
	switch {
	case fileSize < 0:
		return 0, invalidf("negative file size %d", fileSize)
	case fileSize == 0:
		return 0, invalidf("file is empty")
	case fileSize < PrefixLen:
		return 0, invalidf("file is %d bytes, shorter than the %d-byte header length", fileSize, PrefixLen)
	case len(prefix) < PrefixLen:
		return 0, invalidf("header length prefix is %d bytes, shorter than %d", len(prefix), PrefixLen)
	}
	// Compare as uint64: a prefix with the top bit set would be negative as
	// an int64 and slip past a signed bound.
	n := binary.LittleEndian.Uint64(prefix)
	switch {
	case n == 0:
		return 0, invalidf("header length is 0")
	case n > MaxHeaderLen:
		return 0, invalidf("header length %d exceeds limit of %d bytes (%d MiB)", n, MaxHeaderLen, MaxHeaderLen>>20)
	case PrefixLen+int64(n) > fileSize:
		return 0, invalidf("file is truncated: header length %d runs past the end of the %d-byte file", n, fileSize)
	}
	return int64(n), nil
}

// Parse validates a header completely before anything trusts its offsets:
// the streamer turns them straight into file reads and buffer slices, so a
// tensor that overlaps another, leaves a gap, or runs past the file must be
// rejected here rather than surface later as corrupt weights.
//
// header is the N JSON bytes that follow the prefix (see HeaderLen) and
// fileSize is the size of the whole file. The returned tensors are sorted by
// (Begin, End, Name) so that the order does not depend on the JSON's key
// order and zero-size tensors sharing an offset come out the same every time.
//
// The JSON is read by a purpose-built scanner rather than encoding/json: it
// must catch duplicate keys (which encoding/json silently merges), reject
// non-integer and overflowing numbers exactly, and stay linear and nearly
// allocation-free on headers of ~100k tensors.
func Parse(header []byte, fileSize int64) (*Header, error) {
	if len(header) == 0 {
		return nil, invalidf("header is empty")
	}
	if len(header) > MaxHeaderLen {
		return nil, invalidf("header length %d exceeds limit of %d bytes (%d MiB)", len(header), MaxHeaderLen, MaxHeaderLen>>20)
	}
	dataOffset := PrefixLen + int64(len(header))
	if fileSize < dataOffset {
		return nil, invalidf("file is truncated: header ends at byte %d but the file is only %d bytes", dataOffset, fileSize)
	}
	if !utf8.Valid(header) {
		return nil, invalidf("header is not valid UTF-8: bad byte at offset %d", firstInvalidUTF8(header))
	}
	p := parser{buf: header}
	h := &Header{DataOffset: dataOffset}
	if err := p.parseTop(h); err != nil {
		return nil, err
	}
	if err := checkLayout(h.Tensors, fileSize-dataOffset); err != nil {
		return nil, err
	}
	return h, nil
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return -1
}

// checkLayout sorts the tensors and requires them to tile the data section.
// Exact tiling, not merely "in bounds and disjoint", is what lets a reader
// fetch the data section in large sequential reads and hand out sub-slices
// without ever exposing bytes that belong to no tensor.
func checkLayout(ts []Tensor, dataLen int64) error {
	if len(ts) == 0 {
		if dataLen != 0 {
			return invalidf("the header lists no tensors but the data section holds %d extra bytes", dataLen)
		}
		return nil
	}
	slices.SortFunc(ts, compareTensors)
	var prevEnd int64
	for i := range ts {
		t := &ts[i]
		if t.Begin != prevEnd {
			if i == 0 {
				return invalidf("gap at the start of the data section: first tensor %q begins at byte %d", t.Name, t.Begin)
			}
			prev := &ts[i-1]
			if t.Begin > prevEnd {
				return invalidf("gap between tensor %q (ends at %d) and tensor %q (begins at %d)",
					prev.Name, prev.End, t.Name, t.Begin)
			}
			return invalidf("tensor %q [%d,%d) overlaps with next tensor %q [%d,%d)",
				prev.Name, prev.Begin, prev.End, t.Name, t.Begin, t.End)
		}
		if t.End > dataLen {
			return invalidf("file is truncated: tensor %q ends at byte %d of the data section but the file holds only %d bytes",
				t.Name, t.End, dataLen)
		}
		prevEnd = t.End
	}
	if prevEnd < dataLen {
		return invalidf("%d extra trailing bytes after the last tensor %q (data section is %d bytes)",
			dataLen-prevEnd, ts[len(ts)-1].Name, dataLen)
	}
	return nil
}

func compareTensors(a, b Tensor) int {
	if c := cmp.Compare(a.Begin, b.Begin); c != 0 {
		return c
	}
	if c := cmp.Compare(a.End, b.End); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// parser is a single-pass scanner over the header JSON. It only understands
// the shapes a SafeTensors header may take, so it never needs a generic value
// skipper or a recursion stack: anything else is an error on the spot.
type parser struct {
	buf []byte
	pos int
	// dims backs every Tensor.Shape, so shapes cost no allocation each.
	dims []int64
	// scratch holds the decoded form of a string with escapes.
	scratch []byte
}

func (p *parser) skipWS() {
	for p.pos < len(p.buf) {
		switch p.buf[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) peekIs(c byte) bool {
	return p.pos < len(p.buf) && p.buf[p.pos] == c
}

// syntaxErr reports malformed JSON at the current position.
func (p *parser) syntaxErr(expected string) error {
	if p.pos >= len(p.buf) {
		return invalidf("header is not valid JSON: unexpected end of input, expected %s", expected)
	}
	r, _ := utf8.DecodeRune(p.buf[p.pos:])
	return invalidf("header is not valid JSON: unexpected %q at byte %d, expected %s", r, p.pos, expected)
}

// kind names the JSON value that starts at the current position, or returns
// "" when no value starts there. It lets type errors say what was found
// ("shape is a string") instead of a bare syntax complaint.
func (p *parser) kind() string {
	if p.pos >= len(p.buf) {
		return ""
	}
	rest := p.buf[p.pos:]
	switch c := rest[0]; {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	case hasPrefix(rest, "true") || hasPrefix(rest, "false"):
		return "a boolean"
	case hasPrefix(rest, "null"):
		return "null"
	}
	return ""
}

func hasPrefix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[:len(s)]) == s
}

// typeErr reports a value of the wrong JSON type, or a syntax error when
// there is no value at all.
func (p *parser) typeErr(subject, want string) error {
	if k := p.kind(); k != "" {
		return invalidf("%s is %s, want %s", subject, k, want)
	}
	return p.syntaxErr("a value")
}

// readString reads the string starting at the current '"'. The result
// aliases the header or the parser's scratch buffer and is only valid until
// the next call, which is what keeps keys like "dtype" allocation-free.
func (p *parser) readString() ([]byte, error) {
	start := p.pos + 1
	for i := start; i < len(p.buf); i++ {
		switch c := p.buf[i]; {
		case c == '"':
			p.pos = i + 1
			return p.buf[start:i], nil
		case c == '\\':
			return p.readEscaped(start, i)
		case c < 0x20:
			return nil, invalidf("header is not valid JSON: control character %#02x in a string at byte %d", c, i)
		}
	}
	p.pos = len(p.buf)
	return nil, p.syntaxErr("the closing '\"' of a string")
}

// readEscaped finishes a string from its first backslash at i.
func (p *parser) readEscaped(start, i int) ([]byte, error) {
	b := p.buf
	out := append(p.scratch[:0], b[start:i]...)
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			p.pos = i + 1
			p.scratch = out
			return out, nil
		case c < 0x20:
			return nil, invalidf("header is not valid JSON: control character %#02x in a string at byte %d", c, i)
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(b) {
			break
		}
		switch e := b[i+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(b[i+2:])
			if !ok {
				return nil, invalidf("header is not valid JSON: bad \\u escape at byte %d", i)
			}
			// JSON spells characters outside the BMP as a UTF-16 surrogate
			// pair. A lone half has no character to decode to; reject it
			// rather than substitute U+FFFD, which could make two distinct
			// names collide.
			if utf16.IsSurrogate(r) {
				var r2 rune = -1
				if r < 0xDC00 && i+12 <= len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
					r2, _ = hex4(b[i+8:])
				}
				dec := utf16.DecodeRune(r, r2)
				if dec == utf8.RuneError {
					return nil, invalidf("header is not valid JSON: unpaired UTF-16 surrogate \\u%04X in a string at byte %d", r, i)
				}
				r = dec
				i += 6
			}
			out = utf8.AppendRune(out, r)
			i += 6
			continue
		default:
			return nil, invalidf("header is not valid JSON: bad escape \\%c in a string at byte %d", e, i)
		}
		i += 2
	}
	p.pos = len(b)
	return nil, p.syntaxErr("the closing '\"' of a string")
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// expectColon consumes the ':' after an object key and the whitespace around it.
func (p *parser) expectColon() error {
	p.skipWS()
	if !p.peekIs(':') {
		return p.syntaxErr("':'")
	}
	p.pos++
	p.skipWS()
	return nil
}

// next consumes the ',' or closing bracket after a member or element and
// reports whether another one follows.
func (p *parser) next(closing byte) (bool, error) {
	p.skipWS()
	if p.peekIs(',') {
		p.pos++
		p.skipWS()
		return true, nil
	}
	if p.peekIs(closing) {
		p.pos++
		return false, nil
	}
	return false, p.syntaxErr(fmt.Sprintf("',' or '%c'", closing))
}

// open consumes an opening bracket and reports whether the container has
// members; for an empty one it consumes the closing bracket too.
func (p *parser) open(closing byte) bool {
	p.pos++
	p.skipWS()
	if p.peekIs(closing) {
		p.pos++
		return false
	}
	return true
}

// key reads an object key, which must start at the current position.
func (p *parser) key() ([]byte, error) {
	if !p.peekIs('"') {
		return nil, p.syntaxErr("a string key")
	}
	k, err := p.readString()
	if err != nil {
		return nil, err
	}
	return k, p.expectColon()
}

func (p *parser) parseTop(h *Header) error {
	p.skipWS()
	if !p.peekIs('{') {
		if p.pos >= len(p.buf) {
			return invalidf("header is not valid JSON: it holds only whitespace")
		}
		return p.typeErr("header", "a JSON object")
	}
	// A rough guess at the entry count from the header size (real entries
	// are ~100 bytes) saves the repeated growth of three large structures.
	guess := len(p.buf) / 128
	seen := make(map[string]struct{}, guess)
	h.Tensors = make([]Tensor, 0, guess)
	p.dims = make([]int64, 0, guess*2)
	more := p.open('}')
	for more {
		k, err := p.key()
		if err != nil {
			return err
		}
		name := string(k)
		if _, dup := seen[name]; dup {
			return invalidf("duplicate key %q in the header", name)
		}
		seen[name] = struct{}{}
		if name == metadataKey {
			if h.Metadata, err = p.parseMetadata(); err != nil {
				return err
			}
		} else {
			t, err := p.parseTensor(name)
			if err != nil {
				return err
			}
			h.Tensors = append(h.Tensors, t)
		}
		if more, err = p.next('}'); err != nil {
			return err
		}
	}
	return p.trailer()
}

// trailer accepts what writers put after the object: the reference writer
// pads the header with spaces to an 8-byte boundary, and some writers pad
// with NULs. Anything else means the length prefix or the JSON is wrong.
func (p *parser) trailer() error {
	for i := p.pos; i < len(p.buf); i++ {
		switch p.buf[i] {
		case ' ', '\t', '\n', '\r', 0:
		default:
			p.pos = i
			return p.syntaxErr("only whitespace or NUL padding after the header object")
		}
	}
	return nil
}

func (p *parser) parseMetadata() (map[string]string, error) {
	if !p.peekIs('{') {
		return nil, p.typeErr(metadataKey, "an object of strings")
	}
	md := make(map[string]string)
	more := p.open('}')
	for more {
		k, err := p.key()
		if err != nil {
			return nil, err
		}
		key := string(k)
		if _, dup := md[key]; dup {
			return nil, invalidf("%s: duplicate key %q", metadataKey, key)
		}
		if !p.peekIs('"') {
			return nil, p.typeErr(fmt.Sprintf("%s[%q]", metadataKey, key), "a string")
		}
		v, err := p.readString()
		if err != nil {
			return nil, err
		}
		md[key] = string(v)
		if more, err = p.next('}'); err != nil {
			return nil, err
		}
	}
	return md, nil
}

func (p *parser) parseTensor(name string) (Tensor, error) {
	t := Tensor{Name: name}
	if !p.peekIs('{') {
		return t, p.typeErr(fmt.Sprintf("tensor %q", name), "an object")
	}
	const (
		haveDType = 1 << iota
		haveShape
		haveOffsets
	)
	var have uint8
	more := p.open('}')
	for more {
		k, err := p.key()
		if err != nil {
			return t, err
		}
		var bit uint8
		switch string(k) {
		case "dtype":
			bit = haveDType
		case "shape":
			bit = haveShape
		case "data_offsets":
			bit = haveOffsets
		default:
			return t, invalidf("tensor %q: unknown field %q", name, k)
		}
		if have&bit != 0 {
			return t, invalidf("tensor %q: duplicate field %q", name, k)
		}
		have |= bit
		switch bit {
		case haveDType:
			err = p.parseDType(&t)
		case haveShape:
			t.Shape, err = p.parseShape(name)
		case haveOffsets:
			t.Begin, t.End, err = p.parseOffsets(name)
		}
		if err != nil {
			return t, err
		}
		if more, err = p.next('}'); err != nil {
			return t, err
		}
	}
	switch {
	case have&haveDType == 0:
		return t, invalidf("tensor %q: missing field \"dtype\"", name)
	case have&haveShape == 0:
		return t, invalidf("tensor %q: missing field \"shape\"", name)
	case have&haveOffsets == 0:
		return t, invalidf("tensor %q: missing field \"data_offsets\"", name)
	}
	return t, checkSize(&t)
}

func (p *parser) parseDType(t *Tensor) error {
	if !p.peekIs('"') {
		return p.typeErr(fmt.Sprintf("tensor %q: dtype", t.Name), "a string")
	}
	s, err := p.readString()
	if err != nil {
		return err
	}
	d, _, ok := lookupDType(s)
	if !ok {
		return invalidf("tensor %q: Unsupported dtype %q (not a safetensors dtype)", t.Name, s)
	}
	t.DType = d
	return nil
}

func (p *parser) parseShape(name string) ([]int64, error) {
	if !p.peekIs('[') {
		return nil, p.typeErr(fmt.Sprintf("tensor %q: shape", name), "an array of non-negative integers")
	}
	start := len(p.dims)
	more := p.open(']')
	for i := 0; more; i++ {
		v, err := p.parseNonNeg(name, "shape", i)
		if err != nil {
			return nil, err
		}
		p.dims = append(p.dims, v)
		if more, err = p.next(']'); err != nil {
			return nil, err
		}
	}
	// Cap the slice so that appending to one tensor's shape cannot
	// overwrite the next tensor's dims in the shared slab.
	return p.dims[start:len(p.dims):len(p.dims)], nil
}

func (p *parser) parseOffsets(name string) (begin, end int64, err error) {
	if !p.peekIs('[') {
		return 0, 0, p.typeErr(fmt.Sprintf("tensor %q: data_offsets", name), "an array of two non-negative integers")
	}
	var v [2]int64
	n := 0
	more := p.open(']')
	for more {
		x, err := p.parseNonNeg(name, "data_offsets", n)
		if err != nil {
			return 0, 0, err
		}
		if n == len(v) {
			return 0, 0, invalidf("tensor %q: data_offsets has more than 2 elements", name)
		}
		v[n] = x
		n++
		if more, err = p.next(']'); err != nil {
			return 0, 0, err
		}
	}
	if n != len(v) {
		return 0, 0, invalidf("tensor %q: data_offsets has %d elements, want 2", name, n)
	}
	if v[0] > v[1] {
		return 0, 0, invalidf("tensor %q: data_offsets [%d, %d] begin after end", name, v[0], v[1])
	}
	return v[0], v[1], nil
}

// parseNonNeg reads an integer element of a shape or data_offsets array. The
// JSON number grammar is checked in full first so that malformed input is a
// syntax error; only then is the number judged as an integer, which keeps
// "1.5", "-1", "1e3" and values beyond int64 from being truncated, wrapped
// or rounded into something that looks valid.
func (p *parser) parseNonNeg(name, field string, index int) (int64, error) {
	start := p.pos
	end, ok := scanNumber(p.buf, start)
	if !ok {
		if p.pos < len(p.buf) && (p.buf[p.pos] == '-' || (p.buf[p.pos] >= '0' && p.buf[p.pos] <= '9')) {
			p.pos = end
			return 0, p.syntaxErr("a digit")
		}
		return 0, p.typeErr(fmt.Sprintf("tensor %q: %s[%d]", name, field, index), "a non-negative integer")
	}
	p.pos = end
	lit := p.buf[start:end]
	if lit[0] == '-' {
		return 0, invalidf("tensor %q: %s[%d] is %s, want a non-negative integer", name, field, index, shorten(lit))
	}
	var v int64
	for _, c := range lit {
		if c < '0' || c > '9' {
			return 0, invalidf("tensor %q: %s[%d] is %s, want an integer", name, field, index, shorten(lit))
		}
		d := int64(c - '0')
		if v > (math.MaxInt64-d)/10 {
			return 0, invalidf("tensor %q: %s[%d] is %s, which overflows int64", name, field, index, shorten(lit))
		}
		v = v*10 + d
	}
	return v, nil
}

// shorten bounds a literal quoted in an error message; a fuzzed or corrupt
// header can hold a number megabytes long.
func shorten(b []byte) string {
	const limit = 40
	if len(b) <= limit {
		return string(b)
	}
	return string(b[:limit]) + "..."
}

// scanNumber returns the end of the JSON number starting at i, and false if
// the bytes there do not follow the JSON number grammar.
func scanNumber(b []byte, i int) (int, bool) {
	digits := func() bool {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > s
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		digits()
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return i, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return i, false
		}
	}
	return i, true
}

// checkSize ties the declared offsets to dtype and shape. The products are
// overflow-checked because a shape such as [2^40, 2^40] would otherwise wrap
// to a small number and let a tiny byte range pass for a huge tensor. The
// size is counted in bits so that the sub-byte dtypes (F4, F6_*), which
// safetensors packs without padding, get the same exact check.
//
// The wording of the mismatch ("Shape claims N bytes ..., but offsets
// reserve M") is the one callers of the reference implementation match.
func checkSize(t *Tensor) error {
	bits, _ := t.DType.Bits()
	count := int64(1)
	for _, d := range t.Shape {
		if d != 0 && count > math.MaxInt64/d {
			return invalidf("tensor %q: shape %s has more elements than fit in int64", t.Name, formatShape(t.Shape))
		}
		count *= d
	}
	if count > math.MaxInt64/int64(bits) {
		return invalidf("tensor %q: %s shape %s has more bytes than fit in int64", t.Name, t.DType, formatShape(t.Shape))
	}
	want, ok := t.DType.ByteLen(count)
	if !ok {
		return invalidf("tensor %q: shape %s x %s is %d elements of %d bits, %d bits in all, which does not end on a byte boundary",
			t.Name, formatShape(t.Shape), t.DType, count, bits, count*int64(bits))
	}
	if want != t.End-t.Begin {
		return invalidf("tensor %q: Shape claims %d bytes (%s x %s), but offsets reserve %d bytes (data_offsets [%d, %d])",
			t.Name, want, formatShape(t.Shape), t.DType, t.End-t.Begin, t.Begin, t.End)
	}
	return nil
}

// formatShape writes a shape as the header spells it, "[2, 3]", rather
// than Go's "[2 3]", so that a message reads like the file it describes.
func formatShape(shape []int64) string {
	b := make([]byte, 0, 2+len(shape)*4)
	b = append(b, '[')
	for i, d := range shape {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = strconv.AppendInt(b, d, 10)
	}
	return string(append(b, ']'))
}
