package gcs

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// attrFields is the JSON API field selection of Open's request: only what
// the backend uses.
const attrFields = "name,size,generation,crc32c,md5Hash"

// objectAttrs is the part of the JSON API's object resource the backend
// reads.
type objectAttrs struct {
	Name       string  `json:"name"`
	Size       jsonInt `json:"size"`
	Generation jsonInt `json:"generation"`
	// CRC32C is the base64 of the big-endian CRC32C; MD5Hash the base64 of
	// the MD5. Both of the bytes as stored, which are the bytes read.
	CRC32C  string `json:"crc32c"`
	MD5Hash string `json:"md5Hash"`
}

// jsonInt is an int64 the JSON API sends as a string ("size": "123"); a
// bare number is taken too.
type jsonInt int64

func (n *jsonInt) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, `"`)
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("not an integer: %q", b)
	}
	*n = jsonInt(v)
	return nil
}

var _ storage.Checksummed = (*object)(nil)

// checksums returns the object's stored checksums: its CRC32C, which GCS
// keeps for every object (composed ones too), and its MD5 where it has one
// (composite objects have none). A value that is absent (an emulator that
// keeps none) or malformed is left out, as the SDK did: the object is then
// read unverified by that value, not refused.
func (a *objectAttrs) checksums() []storage.Checksum {
	var sums []storage.Checksum
	if v, err := base64.StdEncoding.DecodeString(a.CRC32C); err == nil && len(v) == checksum.CRC32C.Size() {
		sums = append(sums, storage.Checksum{Algorithm: checksum.CRC32C, Value: v, Source: "crc32c attribute"})
	}
	if v, err := base64.StdEncoding.DecodeString(a.MD5Hash); err == nil && len(v) == checksum.MD5.Size() {
		sums = append(sums, storage.Checksum{Algorithm: checksum.MD5, Value: v, Source: "md5Hash attribute"})
	}
	return sums
}

// Checksums returns the CRC32C (and MD5, where present) Open read.
func (o *object) Checksums() []storage.Checksum { return o.sums }

// NoChecksumReason explains an object without checksums (only a server
// that keeps none: GCS has a CRC32C for every object).
func (o *object) NoChecksumReason() string {
	if len(o.sums) == 0 {
		return "the object's metadata has no crc32c and no md5Hash"
	}
	return ""
}
