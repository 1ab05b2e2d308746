package safetensors

import "math"

// Bits reports the width of one element in bits, and false for names that
// safetensors (0.8) does not define. Every dtype the format defines is
// known here, including the sub-byte ones (F4, F6_E2M3, F6_E3M2): whether
// a consumer can represent them is the consumer's concern, and knowing
// their width is what lets a file holding them be validated and its other
// tensors streamed.
func (d DType) Bits() (int, bool) {
	_, bits, ok := lookupDType(d)
	return bits, ok
}

// Size reports the element size in whole bytes. The second result is false
// for unknown names and for the sub-byte dtypes, whose elements have no
// byte size of their own; use ByteLen for the size of a tensor.
func (d DType) Size() (int, bool) {
	bits, ok := d.Bits()
	if !ok || bits%8 != 0 {
		return 0, false
	}
	return bits / 8, true
}

// ByteLen is the number of bytes that count elements of d occupy. It is
// false for an unknown dtype, for a count whose bits overflow int64, and for
// a count of sub-byte elements that does not end on a byte boundary (three
// F4 values are 12 bits): safetensors packs sub-byte elements with no
// padding, and rejects such a tensor too.
func (d DType) ByteLen(count int64) (int64, bool) {
	bits, ok := d.Bits()
	if !ok || count < 0 || count > math.MaxInt64/int64(bits) {
		return 0, false
	}
	total := count * int64(bits)
	if total%8 != 0 {
		return 0, false
	}
	return total / 8, true
}

// lookupDType returns the canonical DType value for a name and its width in
// bits, so that parsing a header can hand out shared constant strings
// instead of allocating one per tensor. It takes a string or a byte slice;
// the compiler turns switch string(b) into a comparison without a copy.
//
// The list is safetensors 0.8's Dtype enum, widths included.
func lookupDType[T ~string | ~[]byte](name T) (DType, int, bool) {
	switch string(name) {
	case "BOOL":
		return "BOOL", 8, true
	case "F4":
		return "F4", 4, true
	case "F6_E2M3":
		return "F6_E2M3", 6, true
	case "F6_E3M2":
		return "F6_E3M2", 6, true
	case "U8":
		return "U8", 8, true
	case "I8":
		return "I8", 8, true
	case "F8_E5M2":
		return "F8_E5M2", 8, true
	case "F8_E4M3":
		return "F8_E4M3", 8, true
	case "F8_E8M0":
		return "F8_E8M0", 8, true
	case "F8_E4M3FNUZ":
		return "F8_E4M3FNUZ", 8, true
	case "F8_E5M2FNUZ":
		return "F8_E5M2FNUZ", 8, true
	case "I16":
		return "I16", 16, true
	case "U16":
		return "U16", 16, true
	case "F16":
		return "F16", 16, true
	case "BF16":
		return "BF16", 16, true
	case "I32":
		return "I32", 32, true
	case "U32":
		return "U32", 32, true
	case "F32":
		return "F32", 32, true
	case "C64":
		return "C64", 64, true
	case "F64":
		return "F64", 64, true
	case "I64":
		return "I64", 64, true
	case "U64":
		return "U64", 64, true
	}
	return "", 0, false
}
