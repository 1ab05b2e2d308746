package s3

import (
	"context"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/model-streamer/model-streamer/go/storage"
)

// List lists the objects under the "directory" uri (scheme://bucket,
// scheme://bucket/dir or scheme://bucket/dir/: the key is a prefix that ends
// in "/"). Without recursive only the direct children are listed (no "/"
// after the prefix). Keys ending in "/" (directory markers) are skipped. URIs
// come back sorted, with the scheme given.
func (b *backend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	scheme, bucket, prefix, err := parseURI(uri)
	if err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	in := &s3.ListObjectsV2Input{Bucket: aws.String(bucket)}
	if prefix != "" {
		in.Prefix = aws.String(prefix)
	}
	if !recursive {
		in.Delimiter = aws.String("/")
	}
	base := scheme + "://" + bucket + "/"
	var out []storage.ObjectInfo
	p := s3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			se := toError(ctx, "list", uri, 0, 0, err)
			if se.Code == storage.Unknown {
				se.Code = storage.Unavailable
			}
			return nil, se
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			if k == "" || strings.HasSuffix(k, "/") {
				continue
			}
			out = append(out, storage.ObjectInfo{URI: base + k, Size: aws.ToInt64(o.Size)})
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.Canceled, Err: err}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URI < out[j].URI })
	return out, nil
}
