package s3

import (
	"bytes"
	"context"
	"errors"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Putter = (*backend)(nil)

// Put writes data as the object uri in one PutObject (checksum sidecars:
// small, so no multipart upload).
func (b *backend) Put(ctx context.Context, uri string, data []byte) error {
	_, bucket, key, err := parseURI(uri)
	if err == nil && key == "" {
		err = errors.New("no object key in URI")
	}
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	_, err = b.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), ContentType: aws.String("application/json")})
	if err != nil {
		return toError(ctx, "put", uri, 0, int64(len(data)), err)
	}
	return nil
}
