package testserver

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"strings"
	"testing"
)

func TestNginx(t *testing.T) {
	srv := Nginx(t)
	data := payload(1 << 20)
	u := srv.Put(t, "dir/a.bin", data)

	status, body := get(t, u, http.Header{"Range": {"bytes=10-19"}})
	if status != http.StatusPartialContent || string(body) != string(data[10:20]) {
		t.Errorf("ranged GET /files/: %d, %d bytes", status, len(body))
	}
	status, body = get(t, srv.URL+"/norange/dir/a.bin", http.Header{"Range": {"bytes=10-19"}})
	if status != http.StatusOK || len(body) != len(data) {
		t.Errorf("ranged GET /norange/: %d, %d bytes; want 200 and the whole file", status, len(body))
	}
	if status, _ = get(t, srv.URL+"/private/dir/a.bin", nil); status != http.StatusForbidden {
		t.Errorf("/private/ without a token: %d, want 403", status)
	}
	if status, _ = get(t, srv.URL+"/private/dir/a.bin", http.Header{"Authorization": {"Bearer " + srv.Token}}); status != http.StatusOK {
		t.Errorf("/private/ with the token: %d, want 200", status)
	}
	if status, _ = get(t, srv.URL+"/noauth/dir/a.bin", http.Header{"X-Api-Key": {"k"}}); status != http.StatusBadRequest {
		t.Errorf("/noauth/ with a credential: %d, want 400", status)
	}
	// The client follows /redirect/ to /signed/?...Signature=sig1.
	if status, body = get(t, srv.URL+"/redirect/dir/a.bin", nil); status != http.StatusOK || len(body) != len(data) {
		t.Errorf("/redirect/: %d, %d bytes", status, len(body))
	}
	if status, _ = get(t, srv.URL+"/signed/dir/a.bin?Signature=sig1", nil); status != http.StatusOK {
		t.Errorf("/signed/ with sig1: %d", status)
	}
	srv.SetSignature(t, "sig2")
	if status, _ = get(t, srv.URL+"/signed/dir/a.bin?Signature=sig1", nil); status != http.StatusForbidden {
		t.Errorf("/signed/ with the expired sig1: %d, want 403", status)
	}

	// https with the test's CA.
	pem, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(c.CloseIdleConnections)
	resp, err := c.Get(srv.TLSURL + "/files/dir/a.bin")
	if err != nil {
		t.Fatalf("https GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("ETag"), `"`) {
		t.Errorf("https GET: %d, ETag %q", resp.StatusCode, resp.Header.Get("ETag"))
	}
}
