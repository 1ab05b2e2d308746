package azure

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/model-streamer/model-streamer/go/storage"
)

// TestEndpointSuffix checks the account URL built from
// AZURE_STORAGE_ENDPOINT_SUFFIX, which AZURE_STORAGE_ENDPOINT overrides.
func TestEndpointSuffix(t *testing.T) {
	for _, c := range []struct {
		s    storage.Settings
		want string
	}{
		{storage.Settings{SettingAccountName: "acct"}, "https://acct.blob.core.windows.net/"},
		{storage.Settings{SettingAccountName: "acct", SettingEndpointSuffix: "blob.core.chinacloudapi.cn"}, "https://acct.blob.core.chinacloudapi.cn/"},
		{storage.Settings{SettingAccountName: "acct", SettingEndpointSuffix: " .blob.core.usgovcloudapi.net/ "}, "https://acct.blob.core.usgovcloudapi.net/"},
		{storage.Settings{SettingAccountName: "acct", SettingEndpointSuffix: "x.example", SettingEndpoint: "http://127.0.0.1:10000/acct"}, "http://127.0.0.1:10000/acct/"},
	} {
		got, err := endpointURL(c.s)
		if err != nil || got != c.want {
			t.Errorf("endpointURL(%v) = %q, %v; want %q", c.s, got, err, c.want)
		}
	}
}

// TestClientCertificateSetting checks that AZURE_CLIENT_CERTIFICATE_PATH (a
// PEM certificate and key) selects a certificate credential, and that a bad
// file is an error naming the setting. No token is asked for: that is an
// Entra ID sign-in.
func TestClientCertificateSetting(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "model-streamer-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "cert.pem")
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})...)
	if err := os.WriteFile(good, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := storage.Settings{SettingTenantID: "00000000-0000-0000-0000-000000000001",
		SettingClientID: "00000000-0000-0000-0000-000000000002", SettingClientCertPath: good,
		SettingAuthorityHost: "https://login.example.test/"}
	cred, kind, err := tokenCredential(s, policy.ClientOptions{})
	if _, ok := cred.(*azidentity.ClientCertificateCredential); !ok || err != nil || kind != credentialKindCertificate {
		t.Fatalf("certificate settings gave %T (%s), %v", cred, kind, err)
	}
	s[SettingClientCertPath] = bad
	if _, _, err := tokenCredential(s, policy.ClientOptions{}); err == nil || !strings.Contains(err.Error(), SettingClientCertPath) {
		t.Fatalf("bad certificate file: %v; want an error naming %s", err, SettingClientCertPath)
	}
}
