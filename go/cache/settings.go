package cache

import (
	"fmt"
	"strings"

	"github.com/model-streamer/model-streamer/go/storage"
)

// namespaceSettings are, per scheme, the settings that choose which store
// serves its URIs: an entry's name includes their values, so s3://b/k of
// one endpoint never hits the entry of s3://b/k of another.
var namespaceSettings = map[string][]string{
	"s3": {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"},
	"gs": {"MODEL_STREAMER_GCS_ENDPOINT", "STORAGE_EMULATOR_HOST", "CLOUD_STORAGE_EMULATOR_ENDPOINT",
		"CLOUD_STORAGE_TESTBENCH_ENDPOINT", "API_ENDPOINT_OVERRIDE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"},
	"az": {"AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ENDPOINT", "AZURE_STORAGE_ENDPOINT_SUFFIX"},
}

// Namespace returns the Opener.Namespace function for settings s.
func Namespace(s storage.Settings) func(scheme string) string {
	return func(scheme string) string {
		names, ok := namespaceSettings[scheme]
		if !ok {
			return scheme
		}
		var b strings.Builder
		b.WriteString(scheme)
		for _, n := range names {
			b.WriteString("|")
			b.WriteString(s[n])
		}
		return b.String()
	}
}

// FromSettings wraps inner in a cache when s sets MODEL_STREAMER_CACHE_DIR
// (MODEL_STREAMER_CACHE_MAX_BYTES bounds it), and returns inner as it is
// otherwise. An unusable directory is reported to warn and streams go
// uncached: a cache never fails a load. A malformed limit is an error, as
// every malformed setting is.
func FromSettings(inner Inner, s storage.Settings, readOnly bool, warn func(string)) (Inner, error) {
	maxBytes, err := ParseMaxBytes(s[MaxBytesSetting])
	if err != nil {
		return nil, err
	}
	dir := s[DirSetting]
	if dir == "" {
		return inner, nil
	}
	c, err := Open(dir, maxBytes)
	if err != nil {
		o := &Opener{Warn: warn}
		o.warn("%s=%s: not caching: %v", DirSetting, dir, err)
		return inner, nil
	}
	return &Opener{Cache: c, Inner: inner, Namespace: Namespace(s), ReadOnly: readOnly, Warn: warn}, nil
}

// String describes the cache for messages.
func (c *Cache) String() string { return fmt.Sprintf("cache %s (limit %d bytes)", c.dir, c.max) }
