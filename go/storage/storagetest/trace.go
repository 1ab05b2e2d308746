package storagetest

import (
	"fmt"
	"maps"
	"net/url"
	"strings"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// TraceHas reports whether a line of a trace file (package tracelog) is for
// wantURL, compared unescaped (the SDKs may send an object name's "/" as
// %2F), and holds every one of parts.
func TraceHas(trace []byte, wantURL string, parts ...string) bool {
	for _, line := range strings.Split(string(trace), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if u, err := url.PathUnescape(f[3]); err != nil || u != wantURL {
			continue
		}
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// CheckTraceSettingRejected checks that newBackend, given base plus a value
// of the trace setting it does not know, fails with one InvalidArgument
// error naming the setting (the tracelog error, not wrapped again).
func CheckTraceSettingRejected(t *testing.T, newBackend func(storage.Settings) (storage.Backend, error), base storage.Settings) {
	t.Helper()
	s := maps.Clone(base)
	if s == nil {
		s = storage.Settings{}
	}
	s[tracelog.Setting] = "verbose"
	_, err := newBackend(s)
	msg := fmt.Sprint(err)
	if storage.CodeOf(err) != storage.InvalidArgument || !strings.Contains(msg, tracelog.Setting) ||
		strings.Count(msg, storage.InvalidArgument.String()) != 1 {
		t.Fatalf("New = %v; want one invalid argument error naming %s", err, tracelog.Setting)
	}
}
