package gcs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Putter = (*backend)(nil)

// Put writes data as the object uri (checksum sidecars: one small upload).
// It is one JSON API media upload, not retried (an upload without a
// generation precondition is not idempotent); canceling ctx abandons it
// uncommitted. The CRC32C the server reports for the new object, when it
// reports one, must be that of data.
func (b *backend) Put(ctx context.Context, uri string, data []byte) error {
	bucket, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no object name in URI")
	}
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	n := int64(len(data))
	auth, err := b.writer()
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Len: n, Code: storage.PermissionDenied,
			Err: fmt.Errorf("credentials for writing (%s): %w", ReadWriteScope, err)}
	}
	q := url.Values{"uploadType": {"media"}, "name": {name}, "fields": {"crc32c"}, "prettyPrint": {"false"}}
	h := http.Header{"Content-Type": {"application/json"}}
	resp, w, err := b.sendAs(ctx, auth, http.MethodPost, b.uploadURL(bucket)+"?"+q.Encode(), h, bytes.NewReader(data))
	if err != nil {
		return classify(ctx, "put", uri, 0, n, err)
	}
	defer w.Done()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(ctx, "put", uri, 0, n, resp, w)
	}
	var got struct {
		CRC32C string `json:"crc32c"`
	}
	if err := json.NewDecoder(w.Reader(resp.Body)).Decode(&got); err != nil || got.CRC32C == "" {
		return nil // committed; the answer only confirms it
	}
	want := base64.StdEncoding.EncodeToString(checksum.Bytes(checksum.CRC32C, checksum.Sum(checksum.CRC32C, data)))
	if got.CRC32C != want {
		return &storage.Error{Op: "put", URI: uri, Len: n, Code: storage.Unavailable,
			Err: fmt.Errorf("the stored object's crc32c is %s, the data's %s: corrupted in transit", got.CRC32C, want)}
	}
	return nil
}
