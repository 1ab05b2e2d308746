package checksum

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"
)

// The check values of the CRC catalogue ("123456789") and, for CRC-64/NVME,
// the NVMe specification's 4 KiB vectors (all zeros, all ones).
func TestKnownVectors(t *testing.T) {
	check := []byte("123456789")
	zeros := make([]byte, 4096)
	ones := bytes.Repeat([]byte{0xff}, 4096)
	cases := []struct {
		alg  Algorithm
		data []byte
		want uint64
	}{
		{CRC32, check, 0xcbf43926},
		{CRC32C, check, 0xe3069283},
		{CRC64NVME, check, 0xae8b14860a799888},
		{CRC64NVME, zeros, 0x6482d367eb22b64e},
		{CRC64NVME, ones, 0xc0ddba7302eca3ac},
		{CRC32, nil, 0},
		{CRC32C, nil, 0},
		{CRC64NVME, nil, 0},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%d", c.alg, len(c.data)), func(t *testing.T) {
			if got := Sum(c.alg, c.data); got != c.want {
				t.Fatalf("Sum = %#x, want %#x", got, c.want)
			}
			h := New(c.alg)
			h.Write(c.data)
			if got, want := h.Sum(nil), Bytes(c.alg, c.want); !bytes.Equal(got, want) {
				t.Fatalf("New().Sum = %x, want %x (big-endian)", got, want)
			}
		})
	}
	h := New(MD5)
	h.Write(check)
	if got := hex.EncodeToString(h.Sum(nil)); got != "25f9e794323b453885f5181f1b624d0b" {
		t.Fatalf("MD5(123456789) = %s", got)
	}
}

func TestAlgorithms(t *testing.T) {
	cases := []struct {
		alg        Algorithm
		valid, crc bool
		size       int
	}{
		{CRC32, true, true, 4},
		{CRC32C, true, true, 4},
		{CRC64NVME, true, true, 8},
		{MD5, true, false, 16},
		{"sha256", false, false, 0},
		{"", false, false, 0},
	}
	for _, c := range cases {
		if c.alg.Valid() != c.valid || c.alg.Combinable() != c.crc || c.alg.Size() != c.size {
			t.Errorf("%q: Valid %v Combinable %v Size %d, want %v %v %d", c.alg,
				c.alg.Valid(), c.alg.Combinable(), c.alg.Size(), c.valid, c.crc, c.size)
		}
	}
	if New("sha256") != nil {
		t.Error("New of an unknown algorithm is not nil")
	}
}

// Combine(crc(A), crc(B), len(B)) must equal crc(A||B) for every split of
// the data, empty halves included, for every CRC.
func TestCombineEqualsDirect(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 70000)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	splits := []struct{ lenA, lenB int }{
		{0, 0}, {0, 1}, {1, 0}, {0, 100}, {100, 0},
		{1, 1}, {3, 5}, {7, 8}, {8, 7}, {255, 256}, {4096, 4096},
		{1, 65535}, {65535, 1}, {12345, 54321}, {70000 - 1, 1}, {0, 70000}, {70000, 0},
	}
	for _, alg := range []Algorithm{CRC32, CRC32C, CRC64NVME} {
		for _, sp := range splits {
			t.Run(fmt.Sprintf("%s/%d+%d", alg, sp.lenA, sp.lenB), func(t *testing.T) {
				a, b := data[:sp.lenA], data[sp.lenA:sp.lenA+sp.lenB]
				want := Sum(alg, data[:sp.lenA+sp.lenB])
				if got := Combine(alg, Sum(alg, a), Sum(alg, b), int64(len(b))); got != want {
					t.Fatalf("Combine = %#x, direct = %#x", got, want)
				}
				// Update continues a CRC: the other way to the same value.
				if got := Update(alg, Sum(alg, a), b); got != want {
					t.Fatalf("Update = %#x, direct = %#x", got, want)
				}
			})
		}
	}
}

// Many random pieces folded left in offset order give the whole CRC, as the
// engine combines its readers' pieces.
func TestCombineFold(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, alg := range []Algorithm{CRC32, CRC32C, CRC64NVME} {
		for trial := range 5 {
			var crc uint64
			for off := 0; off < len(data); {
				n := min(rng.IntN(40000), len(data)-off) // zero-length pieces too
				crc = Combine(alg, crc, Sum(alg, data[off:off+n]), int64(n))
				off += n
			}
			if want := Sum(alg, data); crc != want {
				t.Fatalf("%s trial %d: folded %#x, direct %#x", alg, trial, crc, want)
			}
		}
	}
}

// A length beyond what a test can allocate: appending 2^33 zero bytes in
// two halves through Combine must agree with one step of 2^33.
func TestCombineLargeLengths(t *testing.T) {
	for _, alg := range []Algorithm{CRC32, CRC32C, CRC64NVME} {
		a := Sum(alg, []byte("prefix"))
		zero := func(n int64) uint64 { return Combine(alg, 0, 0, n) } // CRC register map of n zero bytes on 0 is 0
		if zero(1<<33) != 0 {
			t.Fatalf("%s: zero bytes on a zero register must stay zero", alg)
		}
		// (a + 2^32 zeros) + 2^32 zeros == a + 2^33 zeros, as maps.
		half := Combine(alg, a, 0, 1<<32)
		if got, want := Combine(alg, half, 0, 1<<32), Combine(alg, a, 0, 1<<33); got != want {
			t.Fatalf("%s: two halves %#x, one step %#x", alg, got, want)
		}
	}
}

func TestFormat(t *testing.T) {
	if got := Format(Bytes(CRC32C, 0xe3069283)); got != "e3069283" {
		t.Fatalf("Format = %s", got)
	}
	if got := Format(Bytes(CRC64NVME, 0xae8b14860a799888)); got != "ae8b14860a799888" {
		t.Fatalf("Format = %s", got)
	}
}

// Per-core hashing rates (go test -bench . ./checksum): what one reader
// goroutine spends on each algorithm per byte it reads.
func BenchmarkHash(b *testing.B) {
	buf := make([]byte, 16<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, alg := range Known {
		b.Run(string(alg), func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			h := New(alg)
			for b.Loop() {
				h.Reset()
				h.Write(buf)
			}
		})
	}
}

// BenchmarkCombine is the cost of joining one piece's CRC.
func BenchmarkCombine(b *testing.B) {
	for _, alg := range []Algorithm{CRC32C, CRC64NVME} {
		b.Run(string(alg), func(b *testing.B) {
			var crc uint64 = 1
			for b.Loop() {
				crc = Combine(alg, crc, 12345, 16<<20+4093)
			}
		})
	}
}
