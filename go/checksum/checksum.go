// Package checksum computes the whole-object checksums object stores keep
// (CRC32, CRC32C, CRC64-NVME, MD5) and combines the CRCs of adjacent byte
// ranges into the CRC of their concatenation. That is what lets many
// readers each hash the range they just read, in parallel and while its
// bytes are still in cache, and the object's CRC follow from the pieces
// without a second pass over memory.
//
// CRC32 (IEEE) and CRC32C (Castagnoli) use hash/crc32, which uses the CPU's
// CRC or carry-less multiply instructions where it has them. CRC64-NVME uses
// hash/crc64 with the NVMe polynomial (table-driven, slicing by 8). MD5 has
// no combination rule: it must see the bytes in order.
package checksum

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"sync"
)

// Algorithm names a checksum, by the lower-case names S3 uses
// (x-amz-checksum-crc32c, ...).
type Algorithm string

const (
	CRC32     Algorithm = "crc32"     // IEEE 802.3, as zlib and S3's CRC32
	CRC32C    Algorithm = "crc32c"    // Castagnoli, as GCS and S3's CRC32C
	CRC64NVME Algorithm = "crc64nvme" // CRC-64/NVME, as S3's CRC64NVME
	MD5       Algorithm = "md5"
)

// Known lists the algorithms this package computes, in the order the
// engine prefers them: combinable CRCs first (the fastest first), MD5 last.
var Known = []Algorithm{CRC32C, CRC32, CRC64NVME, MD5}

// crc64NVMEPoly is the CRC-64/NVME polynomial 0xad93d23594c93659 bit
// reflected, the form hash/crc64 takes. hash/crc64 inverts the register on
// entry and exit, which is exactly this CRC's init and xorout (all ones):
// the check value of "123456789" is 0xae8b14860a799888 (see the tests).
const crc64NVMEPoly = 0x9a6c9329ac4bc9b5

// The tables are built on first use, not at package init: every process
// that loads the library ran these inits (0.19 ms of its start-up, the
// largest of any package's, GODEBUG=inittrace=1), most of which never
// computes a CRC32C or CRC64-NVME.
var (
	castagnoli = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })
	nvmeTable  = sync.OnceValue(func() *crc64.Table { return crc64.MakeTable(crc64NVMEPoly) })
)

// params describes a reflected CRC for Combine: its width in bits and its
// polynomial in reflected form.
type params struct {
	width int
	poly  uint64
}

func (a Algorithm) params() (params, bool) {
	switch a {
	case CRC32:
		return params{32, 0xedb88320}, true
	case CRC32C:
		return params{32, 0x82f63b78}, true
	case CRC64NVME:
		return params{64, crc64NVMEPoly}, true
	}
	return params{}, false
}

// Valid reports whether a is one of the algorithms this package computes.
func (a Algorithm) Valid() bool { return a.Combinable() || a == MD5 }

// Combinable reports whether a is a CRC, whose values over adjacent ranges
// Combine joins.
func (a Algorithm) Combinable() bool {
	_, ok := a.params()
	return ok
}

// Size is the length of a's value in bytes (0 for an unknown algorithm).
func (a Algorithm) Size() int {
	switch a {
	case CRC32, CRC32C:
		return 4
	case CRC64NVME:
		return 8
	case MD5:
		return md5.Size
	}
	return 0
}

// Update returns the CRC a of the bytes whose CRC was crc followed by p
// (crc 0 starts a new one). It panics for a non-CRC algorithm.
func Update(a Algorithm, crc uint64, p []byte) uint64 {
	switch a {
	case CRC32:
		return uint64(crc32.Update(uint32(crc), crc32.IEEETable, p))
	case CRC32C:
		return uint64(crc32.Update(uint32(crc), castagnoli(), p))
	case CRC64NVME:
		return crc64.Update(crc, nvmeTable(), p)
	}
	panic("checksum: Update of a non-CRC algorithm " + string(a))
}

// Sum returns the CRC a of p.
func Sum(a Algorithm, p []byte) uint64 { return Update(a, 0, p) }

// New returns a hash.Hash computing a, whose Sum is the value in the byte
// order stores use (big-endian for CRCs), or nil for an unknown algorithm.
func New(a Algorithm) hash.Hash {
	switch a {
	case CRC32:
		return crc32.NewIEEE()
	case CRC32C:
		return crc32.New(castagnoli())
	case CRC64NVME:
		return crc64.New(nvmeTable())
	case MD5:
		return md5.New()
	}
	return nil
}

// Bytes returns CRC value crc as stores encode it: big-endian, Size bytes.
func Bytes(a Algorithm, crc uint64) []byte {
	switch a.Size() {
	case 4:
		return binary.BigEndian.AppendUint32(nil, uint32(crc))
	case 8:
		return binary.BigEndian.AppendUint64(nil, crc)
	}
	panic("checksum: Bytes of a non-CRC algorithm " + string(a))
}

// Format renders a value for messages: lower-case hex, as stores' tools print them.
func Format(v []byte) string { return hex.EncodeToString(v) }

// Combine returns the CRC a of A followed by B, given crcA (the CRC of A),
// crcB (the CRC of B) and lenB (B's length in bytes). A lenB <= 0 returns
// crcA: B is empty.
//
// The method is the usual one (zlib's crc32_combine): appending lenB zero
// bytes to A is a linear map of its CRC register over GF(2), a w x w bit
// matrix; the CRC of A||B is that map applied to crcA, xor crcB (the
// register's initial and final inversions cancel out). The matrices for
// 2^k zero bytes are computed once per algorithm by repeated squaring, so
// one Combine costs at most 63 matrix-vector products of w words.
func Combine(a Algorithm, crcA, crcB uint64, lenB int64) uint64 {
	if lenB <= 0 {
		return crcA
	}
	pow := powers(a)
	for k := 0; lenB != 0; k, lenB = k+1, lenB>>1 {
		if lenB&1 != 0 {
			crcA = gf2Times(pow[k], crcA)
		}
	}
	return crcA ^ crcB
}

var (
	powersMu  sync.Mutex
	powersTab = map[Algorithm][][]uint64{}
)

// powers returns, for algorithm a, the operators that append 2^k zero bytes
// to a CRC register, k = 0..62.
func powers(a Algorithm) [][]uint64 {
	powersMu.Lock()
	defer powersMu.Unlock()
	if p, ok := powersTab[a]; ok {
		return p
	}
	pr, ok := a.params()
	if !ok {
		panic("checksum: Combine of a non-CRC algorithm " + string(a))
	}
	// One zero bit: the register shifts right by one and, when the bit
	// shifted out was set, takes the polynomial in. Column n of the matrix
	// is the image of register bit n.
	bit := make([]uint64, pr.width)
	bit[0] = pr.poly
	for n := 1; n < pr.width; n++ {
		bit[n] = 1 << (n - 1)
	}
	m := bit
	for range 3 { // 2, 4, 8 zero bits: one zero byte
		m = gf2Square(m)
	}
	out := make([][]uint64, 63)
	out[0] = m
	for k := 1; k < len(out); k++ {
		out[k] = gf2Square(out[k-1])
	}
	powersTab[a] = out
	return out
}

// gf2Times multiplies the bit matrix mat (one word per column) by vec.
func gf2Times(mat []uint64, vec uint64) uint64 {
	var sum uint64
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

// gf2Square returns mat x mat.
func gf2Square(mat []uint64) []uint64 {
	sq := make([]uint64, len(mat))
	for n, col := range mat {
		sq[n] = gf2Times(mat, col)
	}
	return sq
}
