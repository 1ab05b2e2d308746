package gcs

import (
	"bytes"
	"crypto/md5"
	"testing"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// What fake-gcs-server keeps for an upload and a composite object, and
// what Open offers of it: the CRC32C always, the MD5 where the server has
// one. (GCS keeps no MD5 for a composite object; fake-gcs-server computes
// one anyway, so for "composed" an MD5 is allowed, and must then be right.)
func TestChecksumsFromFakeGCS(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "")
	a, c := bytes.Repeat([]byte("model-streamer"), 20000), bytes.Repeat([]byte{7, 1}, 33333)
	e.put(t, "a", a)
	e.put(t, "c", c)
	e.put(t, "empty", nil)
	e.srv.Compose(t, bucket, "composed", "a", "c")
	whole := append(append([]byte{}, a...), c...)
	md5of := func(p []byte) []byte { s := md5.Sum(p); return s[:] }
	cases := []struct {
		name string
		data []byte
		md5  bool // required; optional otherwise
	}{
		{"a", a, true},
		{"empty", nil, true},
		{"composed", whole, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := open(t, b, "gs://"+bucket+"/"+tc.name)
			cs, ok := o.(storage.Checksummed)
			if !ok {
				t.Fatal("gcs object does not implement storage.Checksummed")
			}
			sums := cs.Checksums()
			want := []storage.Checksum{{Algorithm: checksum.CRC32C, Value: checksum.Bytes(checksum.CRC32C, checksum.Sum(checksum.CRC32C, tc.data))}}
			if tc.md5 || len(sums) == 2 {
				want = append(want, storage.Checksum{Algorithm: checksum.MD5, Value: md5of(tc.data)})
			}
			if len(sums) != len(want) {
				t.Fatalf("offered %v, want %v", sums, want)
			}
			for i := range want {
				if sums[i].Algorithm != want[i].Algorithm || !bytes.Equal(sums[i].Value, want[i].Value) {
					t.Fatalf("offered %v, want %v", sums, want)
				}
			}
		})
	}
}
