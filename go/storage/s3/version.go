package s3

import "github.com/model-streamer/model-streamer/go/storage"

var _ storage.Versioned = (*object)(nil)

// Version is the ETag HeadObject reported, and the version ID on a
// versioned bucket (an ETag alone repeats when the same bytes are written
// again, which is the same content; the version ID tells them apart anyway).
func (o *object) Version() string {
	if o.etag == nil || *o.etag == "" {
		return ""
	}
	if o.versionID != "" {
		return "etag=" + *o.etag + ";version=" + o.versionID
	}
	return "etag=" + *o.etag
}
