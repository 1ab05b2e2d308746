package azure

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// TestTrace reads a range with RUNAI_STREAMER_S3_TRACE=1, with a shared key
// and with a SAS token (which travels in the query string), and finds the
// exchange, and neither secret, in the trace file in the working directory.
func TestTrace(t *testing.T) {
	srv, c := azurite(t) // before Chdir: the server's binary is found from the working directory
	data := randBytes(10_000, 9)
	cred, err := azblob.NewSharedKeyCredential(srv.AccountName, srv.AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	q, err := sas.BlobSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		ExpiryTime:    time.Now().Add(time.Hour),
		ContainerName: c,
		Permissions:   (&sas.ContainerPermissions{Read: true}).String(),
	}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Chdir(dir)

	for _, tc := range []struct {
		name string
		s    storage.Settings
	}{
		{"shared-key", keySettings(srv, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName))},
		{"sas", storage.Settings{SettingEndpoint: srv.BlobEndpoint, SettingSASToken: "?" + q.Encode()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blobName := "trace/" + tc.name + ".bin"
			srv.PutBlob(t, c, blobName, data)
			tc.s[tracelog.Setting] = "1"
			obj := open(t, newTestBackend(t, tc.s), "az://"+c+"/"+blobName)
			dst := make([]byte, 1000)
			if n, err := obj.ReadAt(context.Background(), dst, 100); n != len(dst) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			checkBytes(t, "ReadAt", dst, data[100:1100])

			trace, err := os.ReadFile(filepath.Join(dir, tracelog.FileName()))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("trace:\n%s", trace)
			wantURL := srv.BlobEndpoint + "/" + c + "/" + blobName
			want := []string{" azure GET ", `range="bytes=100-1099"`, " status=206 ", " bytes=1000 "}
			if !storagetest.TraceHas(trace, wantURL, want...) {
				t.Errorf("no line for %s with all of %q", wantURL, want)
			}
			sig := q.Signature()
			for _, secret := range []string{srv.AccountKey, sig, url.QueryEscape(sig), "sig=", "SharedKey", "Authorization", "?"} {
				if strings.Contains(string(trace), secret) {
					t.Errorf("trace holds %q", secret)
				}
			}
		})
	}
}

// TestTraceSettingInvalid checks that New rejects a value of the trace
// setting it does not know, with the error tracelog gives, not rewrapped.
func TestTraceSettingInvalid(t *testing.T) {
	storagetest.CheckTraceSettingRejected(t, New, storage.Settings{SettingAccountName: "acct", SettingAccountKey: "a2V5"})
}
