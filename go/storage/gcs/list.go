package gcs

import (
	"context"
	"sort"
	"strings"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/iterator"

	"github.com/model-streamer/model-streamer/go/storage"
)

// List lists the objects under uri (gs://bucket or gs://bucket/prefix),
// treating the path as a directory ("/" is appended when missing): its
// direct children, or every object below it when recursive. Objects whose
// names end in "/" (folder placeholders) are skipped. URIs come back as
// gs://bucket/name, sorted. A prefix with no objects is an empty list.
func (b *backend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	bucket, prefix, err := parseURI(uri)
	if err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	q := &gcs.Query{Prefix: prefix}
	if !recursive {
		q.Delimiter = "/"
	}
	if err := q.SetAttrSelection([]string{"Name", "Size"}); err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.Internal, Err: err}
	}
	it := b.client.Bucket(bucket).Objects(ctx, q)
	var out []storage.ObjectInfo
	for {
		a, err := it.Next()
		if err == iterator.Done {
			break
		}
		if err != nil {
			return nil, classify(ctx, "list", uri, 0, 0, err)
		}
		if a.Name == "" || strings.HasSuffix(a.Name, "/") {
			continue // a common prefix ("subdirectory") or a folder placeholder
		}
		out = append(out, storage.ObjectInfo{URI: "gs://" + bucket + "/" + a.Name, Size: a.Size})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URI < out[j].URI })
	return out, nil
}
