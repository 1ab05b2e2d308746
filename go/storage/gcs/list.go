package gcs

import (
	"context"
	"net/url"
	"sort"
	"strings"

	"github.com/model-streamer/model-streamer/go/storage"
)

// listFields is the JSON API field selection of a listing page.
const listFields = "items(name,size),nextPageToken"

// listPage is the part of a JSON API objects.list answer the backend reads.
type listPage struct {
	Items []struct {
		Name string  `json:"name"`
		Size jsonInt `json:"size"`
	} `json:"items"`
	NextPageToken string `json:"nextPageToken"`
}

// List lists the objects under uri (gs://bucket or gs://bucket/prefix),
// treating the path as a directory ("/" is appended when missing): its
// direct children, or every object below it when recursive. Objects whose
// names end in "/" (folder placeholders) are skipped. URIs come back as
// gs://bucket/name, sorted. A prefix with no objects is an empty list.
// Each page is a metadata request (retried, see the package
// documentation).
func (b *backend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	bucket, prefix, err := parseURI(uri)
	if err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	q := url.Values{"prefix": {prefix}, "fields": {listFields}, "prettyPrint": {"false"}}
	if !recursive {
		q.Set("delimiter", "/") // children only: deeper names come back as prefixes, ignored
	}
	var out []storage.ObjectInfo
	for {
		var page listPage
		if err := b.getJSON(ctx, "list", uri, b.listURL(bucket)+"?"+q.Encode(), &page); err != nil {
			return nil, err
		}
		for _, it := range page.Items {
			if it.Name == "" || strings.HasSuffix(it.Name, "/") {
				continue // a folder placeholder
			}
			out = append(out, storage.ObjectInfo{URI: "gs://" + bucket + "/" + it.Name, Size: int64(it.Size)})
		}
		if page.NextPageToken == "" {
			break
		}
		q.Set("pageToken", page.NextPageToken)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URI < out[j].URI })
	return out, nil
}
