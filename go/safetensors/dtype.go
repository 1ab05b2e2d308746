package safetensors

// Size reports the element size in bytes. The second result is false for
// names this package does not know, including the sub-byte F4 and F6_*
// formats: their bytes-per-tensor rule is not element count times a whole
// byte size, so checking their offsets the usual way would be wrong.
func (d DType) Size() (int, bool) {
	_, size, ok := lookupDType(d)
	return size, ok
}

// lookupDType returns the canonical DType value for a name, so that parsing
// a header can hand out shared constant strings instead of allocating one per
// tensor. It takes a string or a byte slice; the compiler turns
// switch string(b) into a comparison without a copy.
func lookupDType[T ~string | ~[]byte](name T) (DType, int, bool) {
	switch string(name) {
	case "BOOL":
		return "BOOL", 1, true
	case "U8":
		return "U8", 1, true
	case "I8":
		return "I8", 1, true
	case "F8_E5M2":
		return "F8_E5M2", 1, true
	case "F8_E4M3":
		return "F8_E4M3", 1, true
	case "F8_E8M0":
		return "F8_E8M0", 1, true
	case "I16":
		return "I16", 2, true
	case "U16":
		return "U16", 2, true
	case "F16":
		return "F16", 2, true
	case "BF16":
		return "BF16", 2, true
	case "I32":
		return "I32", 4, true
	case "U32":
		return "U32", 4, true
	case "F32":
		return "F32", 4, true
	case "I64":
		return "I64", 8, true
	case "U64":
		return "U64", 8, true
	case "F64":
		return "F64", 8, true
	case "C64":
		return "C64", 8, true
	}
	return "", 0, false
}
