package azure

import (
	"testing"

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
