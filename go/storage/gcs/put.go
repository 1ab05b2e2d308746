package gcs

import (
	"context"
	"errors"

	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Putter = (*backend)(nil)

// Put writes data as the object uri (checksum sidecars: one small upload).
func (b *backend) Put(ctx context.Context, uri string, data []byte) error {
	bucket, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no object name in URI")
	}
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // an unfinished upload is abandoned, not committed
	w := b.client.Bucket(bucket).Object(name).NewWriter(ctx)
	w.ContentType = "application/json"
	if _, err := w.Write(data); err != nil {
		return classify(ctx, "put", uri, 0, int64(len(data)), err)
	}
	if err := w.Close(); err != nil {
		return classify(ctx, "put", uri, 0, int64(len(data)), err)
	}
	return nil
}
