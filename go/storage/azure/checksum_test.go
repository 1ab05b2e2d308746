package azure

import (
	"bytes"
	"crypto/md5"
	"strings"
	"testing"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// What Azurite keeps for each way of uploading, and what Open offers of
// it: Content-MD5 for Put Blob, and for Put Block List only when the
// uploader set it.
func TestChecksumsFromAzurite(t *testing.T) {
	srv, c := azurite(t)
	b := newTestBackend(t, connSettings(srv))
	data := randBytes(3<<20+17, 9)
	sum := md5.Sum(data)
	blocks := [][]byte{data[:1<<20], data[1<<20 : 2<<20], data[2<<20:]}
	srv.PutBlob(t, c, "single", data)
	srv.PutBlockList(t, c, "blocks", blocks, nil)
	srv.PutBlockList(t, c, "blocks-md5", blocks, sum[:])
	srv.PutBlob(t, c, "empty", nil)
	empty := md5.Sum(nil)
	cases := []struct {
		name   string
		want   []byte // the MD5 offered; nil: none
		reason string
	}{
		{"single", sum[:], ""},
		{"blocks", nil, "no Content-MD5"},
		{"blocks-md5", sum[:], ""},
		{"empty", empty[:], ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := open(t, b, "az://"+c+"/"+tc.name)
			cs, ok := o.(storage.Checksummed)
			if !ok {
				t.Fatal("azure object does not implement storage.Checksummed")
			}
			sums, reason := cs.Checksums(), cs.NoChecksumReason()
			if tc.want == nil {
				if len(sums) != 0 || !strings.Contains(reason, tc.reason) {
					t.Fatalf("offered %v (reason %q), want none because %q", sums, reason, tc.reason)
				}
				return
			}
			if len(sums) != 1 || sums[0].Algorithm != checksum.MD5 || !bytes.Equal(sums[0].Value, tc.want) {
				t.Fatalf("offered %v, want md5:%x", sums, tc.want)
			}
		})
	}
}
