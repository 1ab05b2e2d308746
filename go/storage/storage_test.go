package storage_test

import (
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
)

func TestCodeForHTTPStatus(t *testing.T) {
	for _, c := range []struct {
		status int
		want   storage.Code
	}{
		{404, storage.NotFound},
		{401, storage.PermissionDenied},
		{403, storage.PermissionDenied},
		{408, storage.Unavailable},
		{429, storage.Unavailable},
		{500, storage.Unavailable},
		{503, storage.Unavailable},
		{400, storage.InvalidArgument},
		{416, storage.InvalidArgument},
		{200, storage.Internal},
		{302, storage.Internal},
	} {
		if got := storage.CodeForHTTPStatus(c.status); got != c.want {
			t.Errorf("status %d: %v, want %v", c.status, got, c.want)
		}
	}
}
