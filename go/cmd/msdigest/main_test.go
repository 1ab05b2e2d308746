package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// writeFile writes a SafeTensors file of U8 tensors and returns their bytes.
func writeFile(t *testing.T, path string, tensors map[string][]byte, order []string) {
	t.Helper()
	header, off := "{", 0
	var data []byte
	for i, name := range order {
		b := tensors[name]
		if i > 0 {
			header += ","
		}
		header += fmt.Sprintf(`%q:{"dtype":"U8","shape":[%d],"data_offsets":[%d,%d]}`, name, len(b), off, off+len(b))
		off += len(b)
		data = append(data, b...)
	}
	header += "}"
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	out := append(append(n[:], header...), data...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The digest is the documented one, computed here from the tensors directly,
// and does not depend on the memory limit (so on arrival order).
func TestDigestMatchesDefinition(t *testing.T) {
	dir := t.TempDir()
	a := map[string][]byte{"w": make([]byte, 5000), "b": []byte("bias")}
	for i := range a["w"] {
		a["w"][i] = byte(i * 7)
	}
	b := map[string][]byte{"x": []byte("hello")}
	writeFile(t, filepath.Join(dir, "a.safetensors"), a, []string{"w", "b"})
	writeFile(t, filepath.Join(dir, "b.safetensors"), b, []string{"x"})

	h := sha256.New()
	for _, e := range []struct {
		file, name string
		data       []byte
	}{
		{"a.safetensors", "b", a["b"]}, {"a.safetensors", "w", a["w"]}, {"b.safetensors", "x", b["x"]},
	} {
		sum := sha256.Sum256(e.data)
		h.Write([]byte(e.file + "\x00" + e.name + "\x00"))
		h.Write(sum[:])
	}
	want := fmt.Sprintf("%x", h.Sum(nil))

	files, err := expand([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{-1, 0} {
		s, err := digest(context.Background(), files, limit)
		if err != nil {
			t.Fatal(err)
		}
		if s.SHA256 != want || s.Tensors != 3 || s.Bytes != 5009 || s.Files != 2 {
			t.Fatalf("limit %d: got %+v, want sha256 %s, 3 tensors, 5009 bytes, 2 files", limit, s, want)
		}
	}
}
