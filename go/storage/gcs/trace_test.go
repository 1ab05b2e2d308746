package gcs

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// TestTrace reads a range with RUNAI_STREAMER_S3_TRACE=1, authenticated by a
// service account whose token must not reach the trace, and finds the
// exchange in the trace file in the working directory.
func TestTrace(t *testing.T) {
	e := newEnv(t) // before Chdir: the server's binary is found from the working directory
	data := storagetest.Bytes(10_000, 7)
	uri := e.put(t, "trace/a.bin", data)
	const token = "ya29.TRACE-SECRET-TOKEN"
	var issued atomic.Int32
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		issued.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, token)
	}))
	t.Cleanup(tokenSrv.Close)
	creds := serviceAccountFile(t, tokenSrv.URL+"/token")
	dir := t.TempDir()
	t.Chdir(dir)

	b := e.backend(t, "", SettingCredentialFile, creds, tracelog.Setting, "1")
	obj := open(t, b, uri)
	dst := make([]byte, 1000)
	if n, err := obj.ReadAt(ctxT(t), dst, 100); n != len(dst) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	checkBytes(t, "ReadAt", dst, data[100:1100])

	trace, err := os.ReadFile(filepath.Join(dir, tracelog.FileName()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace:\n%s", trace)
	wantURL := "http://" + e.srv.Host + "/" + bucket + "/trace/a.bin"
	want := []string{" gcs GET ", `range="bytes=100-1099"`, " bytes=1000 "}
	if !storagetest.TraceHas(trace, wantURL, append(want, " status=206 ")...) && !storagetest.TraceHas(trace, wantURL, append(want, " status=200 ")...) {
		t.Errorf("no line for %s with all of %q and status 206 or 200", wantURL, want)
	}
	if issued.Load() == 0 {
		t.Fatal("no token was issued: the requests were not authenticated")
	}
	for _, secret := range []string{token, "Bearer", "Authorization", "?"} {
		if strings.Contains(string(trace), secret) {
			t.Errorf("trace holds %q", secret)
		}
	}
}

// TestTraceSettingInvalid checks that New rejects a value of the trace
// setting it does not know, with the error tracelog gives, not rewrapped.
func TestTraceSettingInvalid(t *testing.T) {
	storagetest.CheckTraceSettingRejected(t, New, storage.Settings{SettingEmulatorHost: "127.0.0.1:1"})
}
