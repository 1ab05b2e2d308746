package gcs

import (
	"strconv"

	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Versioned = (*object)(nil)

// Version is the object's generation: GCS gives every write of a name a new
// one (and reads are pinned to it, see Open).
func (o *object) Version() string {
	if o.generation <= 0 {
		return ""
	}
	return "generation=" + strconv.FormatInt(o.generation, 10)
}
