package azure

import (
	"strings"
	"testing"
)

func TestParseConnectionString(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want connectionString
		err  string
	}{
		{in: "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn",
			want: connectionString{endpoint: "https://acct.blob.core.chinacloudapi.cn/", accountName: "acct", accountKey: "a2V5"}},
		{in: "AccountName=acct;AccountKey=a2V5==;", // a key ends in '='; a trailing ';'
			want: connectionString{endpoint: "https://acct.blob.core.windows.net/", accountName: "acct", accountKey: "a2V5=="}},
		{in: "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
			want: connectionString{endpoint: "http://127.0.0.1:10000/devstoreaccount1/", accountName: "devstoreaccount1", accountKey: "a2V5"}},
		{in: "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountKey=a2V5", // account from the emulator's path
			want: connectionString{endpoint: "http://127.0.0.1:10000/devstoreaccount1/", accountName: "devstoreaccount1", accountKey: "a2V5"}},
		{in: "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&sig=x%2By",
			want: connectionString{endpoint: "https://acct.blob.core.windows.net/", sas: "sv=2022-11-02&sig=x%2By"}},
		{in: "usedevelopmentstorage=true", want: devStorage},
		{in: "AccountName=acct", err: "needs AccountName and AccountKey, or SharedAccessSignature"},
		{in: "AccountKey=a2V5", err: "needs AccountName or BlobEndpoint"},
		{in: "just text", err: "Key=Value"},
	} {
		got, err := parseConnectionString(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q:\n got %+v, %v\nwant %+v", tc.in, got, err, tc.want)
		}
	}
}
