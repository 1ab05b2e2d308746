package s3

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// TestTrace reads a range with RUNAI_STREAMER_S3_TRACE=1 and finds the
// exchange, and no secret, in the trace file in the working directory.
func TestTrace(t *testing.T) {
	e := newEnv(t) // before Chdir: the server's binary is found from the working directory
	data := e.put(t, "trace/a.bin", 10_000)
	dir := t.TempDir()
	t.Chdir(dir)

	b := e.backend(t, e.srv.Endpoint, tracelog.Setting, "1")
	o := open(t, b, e.uri("trace/a.bin"))
	dst := make([]byte, 1000)
	if n, err := o.ReadAt(context.Background(), dst, 100); n != len(dst) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if string(dst) != string(data[100:1100]) {
		t.Fatal("ReadAt: wrong bytes")
	}

	trace, err := os.ReadFile(filepath.Join(dir, tracelog.FileName()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace:\n%s", trace)
	wantURL := e.srv.Endpoint + "/" + e.bucket + "/trace/a.bin"
	want := []string{" s3 GET ", `range="bytes=100-1099"`, " status=206 ", " bytes=1000 "}
	if !storagetest.TraceHas(trace, wantURL, want...) {
		t.Errorf("no line for %s with all of %q", wantURL, want)
	}
	for _, secret := range []string{e.srv.SecretKey, "Authorization", "X-Amz-", "?"} {
		if strings.Contains(string(trace), secret) {
			t.Errorf("trace holds %q", secret)
		}
	}
}

// TestTraceSettingInvalid checks that New rejects a value of the trace
// setting it does not know, with the error tracelog gives, not rewrapped.
func TestTraceSettingInvalid(t *testing.T) {
	storagetest.CheckTraceSettingRejected(t, New, storage.Settings{})
}
