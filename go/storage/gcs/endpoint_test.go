package gcs

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
)

// TestEndpointPrecedence checks which setting picks the endpoint when
// several are set, and the URL each value becomes.
func TestEndpointPrecedence(t *testing.T) {
	all := storage.Settings{
		SettingEndpoint:            "http://own:1/storage/v1/",
		SettingEmulatorEndpoint:    "http://cpp-emulator:2",
		SettingTestbenchEndpoint:   "http://cpp-testbench:3",
		SettingEmulatorHost:        "go-emulator:4",
		SettingAPIEndpointOverride: "https://psc.example:5",
	}
	without := func(keys ...string) storage.Settings {
		s := storage.Settings{}
		for k, v := range all {
			s[k] = v
		}
		for _, k := range keys {
			delete(s, k)
		}
		return s
	}
	for _, c := range []struct {
		s                storage.Settings
		setting, wantURL string
		auth             authMode
	}{
		{all, SettingEndpoint, "http://own:1/storage/v1/", authAnyFile},
		{without(SettingEndpoint), SettingEmulatorEndpoint, "http://cpp-emulator:2/storage/v1/", authExplicitFile},
		{without(SettingEndpoint, SettingEmulatorEndpoint), SettingTestbenchEndpoint, "http://cpp-testbench:3/storage/v1/", authExplicitFile},
		{without(SettingEndpoint, SettingEmulatorEndpoint, SettingTestbenchEndpoint), SettingEmulatorHost, "http://go-emulator:4/storage/v1/", authNone},
		{storage.Settings{SettingAPIEndpointOverride: "https://psc.example:5"}, SettingAPIEndpointOverride, "https://psc.example:5/storage/v1/", authDefault},
		{storage.Settings{SettingEmulatorEndpoint: "https://storage.googleapis.com"}, SettingEmulatorEndpoint, "https://storage.googleapis.com/storage/v1/", authExplicitFile},
		{storage.Settings{SettingEmulatorEndpoint: "  ", SettingEmulatorHost: "h:1"}, SettingEmulatorHost, "http://h:1/storage/v1/", authNone},
		{storage.Settings{}, "", "", authDefault},
	} {
		ep, err := endpointSetting(c.s)
		if err != nil {
			t.Errorf("%v: %v", c.s, err)
			continue
		}
		if ep.setting != c.setting || ep.url != c.wantURL || ep.auth != c.auth {
			t.Errorf("%v: endpoint %+v, want %s %s auth %d", c.s, ep, c.setting, c.wantURL, c.auth)
		}
	}
	for _, s := range []storage.Settings{
		{SettingEmulatorEndpoint: "127.0.0.1:4443"},
		{SettingTestbenchEndpoint: "ftp://x"},
		{SettingAPIEndpointOverride: "storage.example"},
	} {
		_, err := New(s)
		for k := range s {
			if storage.CodeOf(err) != storage.InvalidArgument || !strings.Contains(fmt.Sprint(err), k) {
				t.Errorf("New(%v) = %v; want InvalidArgument naming %s", s, err, k)
			}
		}
	}
}

// TestEndpointSettings streams and lists through each endpoint setting
// against fake-gcs-server, and checks from the requests the server saw
// whether they were authenticated as the package documentation says.
func TestEndpointSettings(t *testing.T) {
	e := newEnv(t)
	data := storagetest.Bytes(2*mib+77, 9)
	uri := e.put(t, "endpoints/model.safetensors", data)
	e.put(t, "endpoints/other.safetensors", data[:10])

	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"tok-9","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(tokenSrv.Close)
	key := serviceAccountFile(t, tokenSrv.URL+"/token")

	target, _ := url.Parse("http://" + e.srv.Host)
	var mu sync.Mutex
	var auths []string
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	frontHost := strings.TrimPrefix(front.URL, "http://")

	for _, c := range []struct {
		name   string
		s      storage.Settings
		signed bool
	}{
		{"emulator endpoint", storage.Settings{SettingEmulatorEndpoint: front.URL}, false},
		{"emulator endpoint ignores ADC file", storage.Settings{SettingEmulatorEndpoint: front.URL, SettingADCFile: key}, false},
		{"emulator endpoint with explicit credentials", storage.Settings{SettingEmulatorEndpoint: front.URL, SettingCredentialFile: key}, true},
		{"testbench endpoint", storage.Settings{SettingTestbenchEndpoint: front.URL}, false},
		{"emulator endpoint wins over emulator host", storage.Settings{SettingEmulatorEndpoint: front.URL, SettingEmulatorHost: "127.0.0.1:1"}, false},
		{"emulator host wins over API override", storage.Settings{SettingEmulatorHost: frontHost, SettingAPIEndpointOverride: "http://127.0.0.1:1", SettingCredentialFile: key}, false},
		{"API override authenticates", storage.Settings{SettingAPIEndpointOverride: front.URL, SettingADCFile: key}, true},
		{"API override anonymous", storage.Settings{SettingAPIEndpointOverride: front.URL, SettingAnonymous: "true", SettingCredentialFile: key}, false},
		{"own endpoint anonymous", storage.Settings{SettingEndpoint: front.URL, SettingAnonymous: "1", SettingCredentialFile: key}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			auths = nil
			mu.Unlock()
			b, err := New(c.s)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			obj := open(t, b, uri)
			got := make([]byte, len(data))
			if n, err := obj.ReadAt(ctxT(t), got, 0); n != len(data) || (err != nil && n != len(got)) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			checkBytes(t, "ReadAt", got, data)
			infos, err := b.(storage.Lister).List(ctxT(t), "gs://"+bucket+"/endpoints", false)
			if err != nil || len(infos) != 2 || infos[0].URI != uri || infos[0].Size != int64(len(data)) {
				t.Fatalf("List = %v, %v", infos, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(auths) < 3 {
				t.Fatalf("requests seen by the endpoint: %q; want metadata, data and listing", auths)
			}
			for _, a := range auths {
				if signed := strings.HasSuffix(a, " auth=Bearer tok-9"); signed != c.signed {
					t.Errorf("request %q: authenticated %v, want %v", a, signed, c.signed)
				}
			}
		})
	}
}
