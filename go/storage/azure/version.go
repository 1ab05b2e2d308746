package azure

import "github.com/model-streamer/model-streamer/go/storage"

var _ storage.Versioned = (*object)(nil)

// Version is the blob's ETag, which every write changes (and reads are
// conditional on, see ReadAt).
func (o *object) Version() string {
	if o.etag == "" {
		return ""
	}
	return "etag=" + string(o.etag)
}
