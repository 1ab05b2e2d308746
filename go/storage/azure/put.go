package azure

import (
	"context"
	"errors"

	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Putter = (*Backend)(nil)

// Put writes data as the blob uri (checksum sidecars: one small upload).
func (b *Backend) Put(ctx context.Context, uri string, data []byte) error {
	c, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no blob name (want az://container/blob)")
	}
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	bc, err := b.acct.blockBlobClient(c, name)
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if _, err := bc.UploadBuffer(ctx, data, nil); err != nil {
		return classify("put", uri, 0, int64(len(data)), ctx, err)
	}
	return nil
}
